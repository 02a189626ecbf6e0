"""The full utility protocol of the labels stage: do new (image, label) pairs help a segmenter? (SPEC section 11)

    python scripts/utility_protocol.py --demo runs/demo --out runs/utility [--label-ae-steps 1000]
        [--label-diffusion-steps 1500] [--cap-minutes 15] [--pairs 16] [--regimes 2 4 8] [--seeds 0 1 2]
        [--curve-steps 1500] [--overwrite]

Builds on a finished demo run (``scripts/demo.py``: its stage-2 checkpoint, exported train/test splits, the
images generated from the real training maps and its real-trained segmenter) and runs, each stage as the
command a user would type (all recorded in the report):

  1. export the validation split (the budget is chosen on it, never on the test split)
  2. train the label autoencoder and the label diffusion with larger budgets than the demo's; each is used at its
     best validation loss (``best-<step>.ckpt``: with 16 training maps both overfit later). ``--label-ckpt`` uses a
     label diffusion checkpoint trained before, with the same commands, instead
  3. ``--pairs`` new (image, label) pairs, map i asked for the class volumes of the i-th real training map
  4. their mask quality against the real test maps (``evaluation/label_metrics.py``)
  5. the segmenter's real-only learning curve on the validation split (``evaluation/segmenter_curve.py``), which
     gives the budget where its Dice has levelled off (``--steps`` skips this and states the budget)
  6. the utility experiment at that budget (``evaluation/utility.py``): arms (a)-(d), ``--regimes`` x ``--seeds``

Both generators are trained on all the demo's training subjects; the regimes limit only what the segmenter sees.
Writes ``OUT/report/README.md`` with the tables, the curve and pair montages; ``OUT/utility_protocol.json``
marks the folder as this tool's (``--overwrite`` deletes nothing else).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from dataset import DataError
from dataset.cli import (
    TIMED_LOG_FORMAT,
    ArgumentParser,
    check_unique,
    float_in,
    nonnegative_int,
    positive_int,
    run_cli,
)
from dataset.embedded import LOWER_BOUND_NOTES
from dataset.files import atomic_write_text, claim_run_folder
from dataset.visualization import pair_montages
from evaluation.export import export_config_split
from evaluation.parallel import usable_cores
from train.stages import best_checkpoint, dataset_config, report_failure, run, train_label_generator

log = logging.getLogger("utility_protocol")
RECORD = "utility_protocol.json"


#: Everything the protocol writes in ``--out`` (its record lists these; ``--overwrite`` replaces exactly them).
ENTRIES = ("data", "label_ae", "label_diffusion", "pairs", "report")


def build_parser() -> argparse.ArgumentParser:
    """The protocol's options (numbers checked while parsing: ``dataset.cli``)."""
    minutes = float_in(0, None, lo_open=True)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished scripts/demo.py output folder")
    p.add_argument("--data-dir", type=Path, default=None, help="its dataset cache (default: <demo>/data_cache)")
    p.add_argument("--out", type=Path, default=Path("runs/utility"), help="everything goes under this folder")
    p.add_argument(
        "--label-ckpt",
        type=Path,
        default=None,
        help="a label diffusion checkpoint already trained on the demo's data: skips step 2",
    )
    # fixed step budgets, so the protocol's numbers do not depend on the machine's speed; each part is used at its
    # lowest validation loss, which both reach well inside these budgets (README, Paired generation)
    p.add_argument("--label-ae-steps", type=positive_int, default=1000, help="training steps of the label autoencoder")
    p.add_argument("--label-diffusion-steps", type=positive_int, default=1500, help="steps of the label diffusion")
    p.add_argument("--cap-minutes", type=minutes, default=15.0,
                   help="safety stop of each part (the report says when it triggered)")  # fmt: skip
    p.add_argument("--pairs", type=positive_int, default=16, help="new (label, image) pairs generated")
    p.add_argument(
        "--regimes", nargs="+", type=positive_int, default=[2, 4, 8], help="real subjects per utility regime"
    )
    p.add_argument(
        "--seeds", nargs="+", type=nonnegative_int, default=[0, 1, 2], help="seeds of the utility experiment"
    )
    p.add_argument("--curve-steps", type=positive_int, default=1500, help="length of the segmenter learning curves")
    p.add_argument("--eval-every", type=positive_int, default=100, help="validation Dice every this many curve steps")
    p.add_argument(
        "--curve-seeds", nargs="+", type=nonnegative_int, default=[0, 1], help="seeds of the learning curves"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="segmenter budget; default: from the learning curve"
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="intra-op threads per stage (and per segmenter worker)"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=usable_cores(),
        help="segmenters trained at once in steps 5-6 (default: the cores this process may use); the numbers do "
        "not depend on it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace what an earlier run of this tool wrote in --out")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def check_demo(demo: Path) -> list[str]:
    """What is missing from a demo folder for this protocol (empty: complete)."""
    needed = ["demo.json", "data/train/images", "data/train/labels", "data/test/images", "data/test/labels",
              "synthetic_train", "segmenter/real.pt", "diffusion/checkpoints/last.ckpt"]  # fmt: skip
    return [n for n in needed if not (demo / n).exists()]


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Check every option and the demo folder, claim ``--out``, run the steps."""
    missing = check_demo(args.demo)
    if missing:
        raise DataError(f"{args.demo} is not a finished demo run (no {', '.join(missing)}): run scripts/demo.py first")
    if args.label_ckpt is not None and not args.label_ckpt.is_file():
        raise DataError(f"--label-ckpt {args.label_ckpt}: no such file")
    for values, what in ((args.regimes, "--regimes"), (args.seeds, "--seeds"), (args.curve_seeds, "--curve-seeds")):
        check_unique(values, what)
    if args.pairs < max(args.regimes):
        raise DataError(f"--pairs {args.pairs} must be >= the largest regime ({max(args.regimes)})")
    with claim_run_folder(args.out, args.overwrite, RECORD, "scripts/utility_protocol.py", ENTRIES, {"argv": argv}):
        return run_steps(args)


@report_failure
def main(argv: list[str] | None = None) -> int:
    """Run the protocol; 0 on success, 2 (one line) on a user error, a failed step's exit status otherwise."""
    return run_cli(build_parser(), command, argv, log_format=TIMED_LOG_FORMAT)


def run_steps(args: argparse.Namespace) -> int:
    """The protocol's steps, in the claimed ``args.out``."""
    out: Path = args.out
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    py, demo, report = sys.executable, args.demo, out / "report"
    data_dir = args.data_dir or demo / "data_cache"
    dataset_cfg = dataset_config(data_dir)
    class_names = [str(c) for c in dataset_cfg.class_names]
    train, test, val = demo / "data" / "train", demo / "data" / "test", out / "data" / "val"
    commands: list[str] = []
    t0 = time.time()

    export_config_split(dataset_cfg, val, "val")
    label_ckpt, capped = args.label_ckpt, []
    if label_ckpt is None:
        capped = train_label_generator(out, args.label_ae_steps, args.label_diffusion_steps, args.cap_minutes,
                                       [f"paths.data_dir={data_dir}"], commands)  # fmt: skip
        label_ckpt = best_checkpoint(out / "label_diffusion" / "checkpoints")
    pairs = out / "pairs"
    run([py, "-m", "scripts.generate_pairs", "--label-ckpt", str(label_ckpt),
         "--image-ckpt", str(demo / "diffusion" / "checkpoints" / "last.ckpt"), "--num-samples", str(args.pairs),
         "--out", str(pairs), "--seed", "0", "--batch-size", "4", "--condition-from", str(train / "labels")],
        commands)  # fmt: skip
    run([py, "-m", "evaluation.label_metrics", "--fake", str(pairs / "labels"), "--real", str(test / "labels"),
         "--train", str(train / "labels"), "--segmenter", str(demo / "segmenter" / "real.pt"), "--fake-images",
         str(pairs / "images"), "--real-images", str(test / "images"), "--data-range", "-1", "1",
         "--out", str(report / "labels.json")], commands)  # fmt: skip
    regimes, names = [str(r) for r in args.regimes], ["--class-names", *class_names, "--data-range", "-1", "1"]
    steps = args.steps
    if steps is None:
        run([py, "-m", "evaluation.segmenter_curve", "--train-images", str(train / "images"), "--train-labels",
             str(train / "labels"), "--val-images", str(val / "images"), "--val-labels", str(val / "labels"), *names,
             "--regimes", *regimes, "--seeds", *map(str, args.curve_seeds), "--steps", str(args.curve_steps),
             "--eval-every", str(args.eval_every), "--jobs", str(args.jobs), "--out", str(report / "curve.json")],
            commands)  # fmt: skip
        steps = int(json.loads((report / "curve.json").read_text())["results"]["budget"])
        log.info("segmenter budget from the learning curve: %d steps", steps)
    run([py, "-m", "evaluation.utility", "--train-images", str(train / "images"), "--train-labels",
         str(train / "labels"), "--test-images", str(test / "images"), "--test-labels", str(test / "labels"),
         "--synth-images", str(demo / "synthetic_train"), "--new-images", str(pairs / "images"), "--new-labels",
         str(pairs / "labels"), *names, "--regimes", *regimes, "--seeds", *map(str, args.seeds),
         "--steps", str(steps), "--jobs", str(args.jobs), "--out", str(report / "utility.json")],
        commands)  # fmt: skip

    elapsed = time.time() - t0
    parts = [name for name in ("labels", "curve", "utility") if (report / f"{name}.md").is_file()]
    curve = ["![learning curve](curve.png)", ""] if (report / "curve.png").is_file() else []
    lines = ["# Med-LSDM utility protocol (embedded MNI152 dataset, CPU)", "",
             f"Total wall time: {elapsed / 60:.1f} min. Demo run: `{demo}`. Segmenter budget: {steps} steps. "
             "Both generators are trained on all the demo's training subjects; the regimes limit only what the "
             "segmenter sees.", "", *[f"**Safety cap:** {note}.\n" for note in capped],
             LOWER_BOUND_NOTES["mni152"], "",
             *[(report / f"{name}.md").read_text() for name in parts], *curve,
             "## New (label | image) pairs (rows: generated label map | its synthetic image)", "",
             *pair_montages(pairs, report, class_names), "",
             "## Commands", "", "```", *commands, "```", ""]  # fmt: skip
    atomic_write_text(report / "README.md", "\n".join(lines))
    log.info("done in %.1f min: report in %s", elapsed / 60, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
