"""The whole Med-LSDM pipeline on an embedded dataset (MNI152 MR or an abdominal CT), on the CPU, in one command.

    python scripts/demo.py [--dataset mni152|ct_abdomen] [--out runs/demo] [--vqgan-steps 600]
        [--diffusion-steps 900] [--label-ae-steps 300] [--label-diffusion-steps 600] [--cap-minutes 10] [--overwrite]

Every training stage has a fixed budget in steps (``DEMO_STEPS``, per dataset), so the same command gives the same
numbers on any machine; ``--cap-minutes`` is only a safety stop, and the report says when it triggered.

``--dataset`` picks the embedded dataset and its CPU experiments ``<dataset>_*_cpu`` (named mni152 below). With
``ct_abdomen`` images are exported and generated in HU, and figures use the dataset config's ``display_window``
(W400/L40 soft tissue). Without the package index, give ct_abdomen its source archive:
``--extra dataset.datamodule.dataset.source=FILE.tar.gz`` (see config/dataset/ct_abdomen.yaml).

Stages (each is the command a user would type, run as a subprocess and logged in the report):
  1. train the VQ-GAN            python -m train.train_vqgan experiment=mni152_vqgan_spade_cpu ...
  2. train the diffusion model   python -m train.train_diffusion experiment=mni152_diffusion_cpu
                                   model=diffusion_rflow_tiny ... (rectified flow; --objective ddpm: the paper's)
  3. export the held-out (test) subjects as NIfTI images and label maps
  4. generate from the test label maps   python -m scripts.generate --labels <test labels> ...
  5. evaluate                     python -m evaluation.compute_metrics --real ... --fake ... --labels ...
                                  python -m evaluation.class_intensity ... (per-class median, real vs synthetic)
  6. report: <out>/report/ with the metrics table (README.md, metrics.json), real | label | synthetic montages
     (PNG) and GIFs.
Labels stage (new label maps and pairs; ``--no-labels`` skips it). L1-L2 need only the data, so they run in a
background thread beside 1-2 (every training is single-threaded; a 2-core machine runs two at once), their output
in <out>/label_generator.log; L3-L5 follow 5:
  L1. train the label autoencoder   python -m train.train_label_ae experiment=mni152_labels_ae_cpu ...
  L2. train the label diffusion     python -m train.train_label_diffusion experiment=mni152_labels_diffusion_cpu ...
  L3. new pairs                     python -m scripts.generate_pairs ... --condition-from <test labels>
      (new maps asked for the volumes of the held-out subjects, then an image for each)
  L4. mask quality                  python -m evaluation.label_metrics --fake ... --real ... --train ...
  L5. a small utility experiment    python -m evaluation.utility ... --regimes 2 4 --seeds 0 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

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
from dataset.files import claim_run_folder
from dataset.visualization import pair_montages
from evaluation.export import export_config_split
from evaluation.parallel import usable_cores
from scripts.demo_report import figure_window, write_report
from train.stages import (
    Background,
    best_checkpoint,
    dataset_config,
    report_failure,
    run,
    train_label_generator,
    train_stage,
)

log = logging.getLogger("demo")
#: The demo's run record: marks its output folder as ours, so ``--overwrite`` never deletes anything else.
DEMO_RECORD = "demo.json"
#: Each training stage's budget in optimizer steps, per embedded dataset: the same command gives the same numbers on
#: any machine (a wall-clock budget made them depend on its speed and load). mni152: what 4 + 5 minutes of stages
#: 1-2 reached on the 2-core CI machine, stage 1 near its best validation PSNR, the label autoencoder and the label
#: diffusion near their lowest validation loss (README, Paired generation); they train beside stages 1-2.
DEMO_STEPS = {
    "mni152": {"vqgan": 600, "diffusion": 900, "label_ae": 300, "label_diffusion": 600},
    "ct_abdomen": {"vqgan": 100, "diffusion": 200, "label_ae": 100, "label_diffusion": 100},
}


def build_parser() -> argparse.ArgumentParser:
    """The demo's options (numbers checked while parsing: ``dataset.cli``)."""
    minutes = float_in(0, None, lo_open=True)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="everything goes under this folder")
    p.add_argument(
        "--dataset",
        choices=tuple(LOWER_BOUND_NOTES),
        default="mni152",
        help="embedded dataset (experiments <name>_*_cpu)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="embedded dataset cache (default: <out>/data_cache)")
    for stage, what in (("vqgan", "stage 1 (optimizer steps: two per batch once the GAN starts)"),
                        ("diffusion", "stage 2"), ("label-ae", "the label autoencoder"),
                        ("label-diffusion", "the label diffusion")):  # fmt: skip
        p.add_argument(f"--{stage}-steps", type=positive_int, default=None,
                       help=f"training steps of {what} (default: the dataset's, see DEMO_STEPS)")  # fmt: skip
    p.add_argument(
        "--cap-minutes",
        type=minutes,
        default=10.0,
        help="safety stop of each training stage: a stage still short of its step budget after this long stops, "
        "and the report says so (its numbers are then not those of the fixed budget)",
    )
    p.add_argument(
        "--decoder",
        choices=("spade", "normal"),
        default="spade",
        help="stage-1 decoder: spade (the label map also conditions decoding; the paper's best) or normal",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="intra-op threads per stage (on the 2-core CI machine one thread trains 2x faster than two)",
    )
    p.add_argument(
        "--objective",
        choices=("rflow", "ddpm"),
        default="rflow",
        help="stage-2 objective: rflow (rectified flow, 30 Euler steps; model=diffusion_rflow_tiny) or ddpm (the "
        "paper's, sampled with DDIM). At the demo budget rflow-30 reached SSIM 0.91 against 0.80 for DDIM-25 and 0.90 "
        "for 500 ancestral DDPM steps, 10x faster than the latter (README, Stage 2 samplers)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampler steps (default: the checkpoint's, 30 for rflow, 25 for DDIM)",
    )
    p.add_argument(
        "--seg-steps", type=positive_int, default=150, help="training steps of each Dice-protocol segmenter"
    )
    p.add_argument("--metrics", default=None, help="metrics for compute_metrics (default: those whose weights exist)")
    p.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for both training stages")
    p.add_argument("--no-labels", action="store_true", help="skip the labels stage (new label maps and pairs)")
    p.add_argument("--label-maps", type=positive_int, default=8, help="new (label, image) pairs generated")
    p.add_argument(
        "--utility-regimes", nargs="+", type=positive_int, default=[2, 4], help="real subjects per utility regime"
    )
    p.add_argument(
        "--utility-seeds", nargs="+", type=nonnegative_int, default=[0, 1], help="seeds of the utility experiment"
    )
    p.add_argument("--utility-steps", type=positive_int, default=40, help="segmenter steps in the utility experiment")
    p.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier demo run wrote in --out (nothing else)"
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


#: The demo's edit at 32^3 (voxels of about 5 x 5 x 6 mm): CSF grown by 6 mm and grey matter shrunk by 5 mm, about a
#: voxel each (the 2 mm / 1 mm of a 1 mm grid would change no voxel here, and an empty edit is refused).
DEMO_EDITS = ["--grow", "2:6", "--shrink", "3:5"]


def edit_stage(out: Path, stage2: Path, ids: list[str], test: Path, report: Path, commands: list[str]) -> list[str]:
    """``scripts/edit.py`` on the first test subject, ``evaluation.edit_metrics`` on all; the report's lines."""
    py = sys.executable
    first = [str(test / sub / f"{ids[0]}.nii.gz") for sub in ("images", "labels")]
    run([py, "-m", "scripts.edit", "--ckpt", str(stage2), "--image", first[0], "--labels", first[1], *DEMO_EDITS,
         "--out", str(out / "edit"), "--png"], commands)  # fmt: skip
    run([py, "-m", "evaluation.edit_metrics", "--ckpt", str(stage2), "--images", str(test / "images"), "--labels",
         str(test / "labels"), "--radii-mm", "15", "--structure", "2", "--seeds", "0", "--segmenter",
         str(out / "segmenter" / "real.pt"), *DEMO_EDITS, "--out", str(report / "edit.json")], commands)  # fmt: skip
    return [(report / "edit.md").read_text(), "",
            f"Edited test subject {ids[0]} ({' '.join(DEMO_EDITS)}; rows: original | edited | |difference| | label "
            "change):", "", "![edit](../edit/montage.png)", ""]  # fmt: skip


def available_metrics() -> str:
    """Image metrics always; LPIPS / FID / 3D-FID only when their pretrained weights are on this machine."""
    from evaluation.weights import INCEPTION, MEDICALNET50, VGG16, MissingWeightsError, resolve

    metrics = ["psnr", "rmse", "ssim", "ssim2d", "msssim"]
    for name, spec in (("lpips", VGG16), ("fid", INCEPTION), ("fid3d", MEDICALNET50)):
        try:
            resolve(spec, None)
        except MissingWeightsError as err:
            log.warning("skipping %s: %s", name, err)
        else:
            metrics.append(name)
    return ",".join(metrics)


def labels_stage(
    args: argparse.Namespace,
    out: Path,
    stage2: Path,
    class_names: list[str],
    commands: list[str],
    data_range: tuple[float, float] = (-1.0, 1.0),
    window: tuple[float, float] = (-1.0, 1.0),
) -> tuple[list[str], list[str]]:
    """The labels stage after its training (:func:`train_label_generator`): new pairs, mask quality, utility.

    ``data_range``: the intensity range of the exported and generated images (HU for CT); ``window``: the figures'.

    Returns:
        (Markdown tables, Markdown lines of the (label | image) montages) for the report.
    """
    py = sys.executable
    test, train, report = out / "data" / "test", out / "data" / "train", out / "report"
    pairs = out / "pairs"
    # new maps asked for the class volumes of the held-out subjects (varied requests: the control check), no repair
    run([py, "-m", "scripts.generate_pairs", "--label-ckpt",
         str(best_checkpoint(out / "label_diffusion" / "checkpoints")), "--image-ckpt", str(stage2),
         "--num-samples", str(args.label_maps), "--out", str(pairs), "--seed", "0", "--batch-size", "4",
         "--condition-from", str(test / "labels")], commands)  # fmt: skip
    run([py, "-m", "evaluation.label_metrics", "--fake", str(pairs / "labels"), "--real", str(test / "labels"),
         "--train", str(train / "labels"), "--segmenter", str(out / "segmenter" / "real.pt"), "--fake-images",
         str(pairs / "images"), "--real-images", str(test / "images"), "--data-range", *map(str, data_range),
         "--out", str(report / "labels.json")], commands)  # fmt: skip
    run([py, "-m", "evaluation.utility", "--train-images", str(train / "images"), "--train-labels",
         str(train / "labels"), "--test-images", str(test / "images"), "--test-labels", str(test / "labels"),
         "--synth-images", str(out / "synthetic_train"), "--new-images", str(pairs / "images"), "--new-labels",
         str(pairs / "labels"), "--class-names", *class_names, "--data-range", *map(str, data_range),
         "--regimes", *map(str, args.utility_regimes), "--seeds", *map(str, args.utility_seeds),
         "--steps", str(args.utility_steps), "--jobs", str(usable_cores()),
         "--out", str(report / "utility.json")], commands)  # fmt: skip
    tables = [(report / f"{name}.md").read_text() for name in ("labels", "utility")]
    note = LOWER_BOUND_NOTES[getattr(args, "dataset", "mni152")]
    montage_lines = ["", "## New (label | image) pairs (rows: generated label map | its synthetic image)", "",
                     note, "", *pair_montages(pairs, report, class_names, window=window)]  # fmt: skip
    return [*tables, note + "\n"], montage_lines


#: Everything the demo writes in ``--out`` (its record lists these; ``--overwrite`` replaces exactly them).
DEMO_ENTRIES = ("data_cache", "vqgan", "diffusion", "data", "synthetic", "synthetic_train", "report", "segmenter",
                "label_ae", "label_diffusion", "label_generator.log", "pairs")  # fmt: skip


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Check every option (the Hydra overrides of ``--extra`` included), claim ``--out``, run the stages."""
    from train.run import check_overrides

    check_unique(args.utility_seeds, "--utility-seeds")
    check_unique(args.utility_regimes, "--utility-regimes")
    vqgan_experiment = f"experiment={'mni152_vqgan_spade_cpu' if args.decoder == 'spade' else 'mni152_vqgan_cpu'}"
    check_overrides("vqgan", [vqgan_experiment, *args.extra])
    check_overrides("diffusion", ["experiment=mni152_diffusion_cpu", *args.extra])
    with claim_run_folder(args.out, args.overwrite, DEMO_RECORD, "scripts/demo.py", DEMO_ENTRIES, {"argv": argv}):
        return run_stages(args)


@report_failure
def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 2 (one line) on a user error, a failed stage's exit status otherwise."""
    return run_cli(build_parser(), command, argv, log_format=TIMED_LOG_FORMAT)


def step_budgets(args: argparse.Namespace) -> dict[str, int]:
    """The training stages' step budgets: the options given, the dataset's :data:`DEMO_STEPS` for the others."""
    given = {stage: getattr(args, f"{stage}_steps") for stage in DEMO_STEPS[args.dataset]}
    return {stage: given[stage] or default for stage, default in DEMO_STEPS[args.dataset].items()}


def run_stages(args: argparse.Namespace) -> int:
    """The stages, in the claimed ``args.out`` (see the module docstring)."""
    out: Path = args.out
    data_dir = args.data_dir or out / "data_cache"
    py = sys.executable
    # Every stage is a subprocess and inherits the thread count (torch reads OMP_NUM_THREADS at start-up).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    vqgan_experiment = f"experiment={args.dataset}_{'vqgan_spade' if args.decoder == 'spade' else 'vqgan'}_cpu"
    commands: list[str] = []
    t0 = time.time()

    # 1-2. the two training stages, through the real entry points. The label generator (L1-L2) needs only the
    # data, so it trains beside them: each training is single-threaded, and this machine has two cores.
    common = [f"paths.data_dir={data_dir}", *args.extra]
    label_commands: list[str] = []
    # the embedded dataset is built once, under a file lock, by whichever training comes first
    steps, cap = step_budgets(args), args.cap_minutes
    label_training = None if args.no_labels else Background(
        lambda: train_label_generator(out, steps["label_ae"], steps["label_diffusion"], cap, common, label_commands,
                                      out / "label_generator.log", args.dataset)
    )  # fmt: skip
    capped = [train_stage([py, "-m", "train.train_vqgan", vqgan_experiment, *common], out / "vqgan", steps["vqgan"],
                          cap, commands)]  # fmt: skip
    stage1 = best_checkpoint(out / "vqgan" / "checkpoints")
    stage2_model = ["model=diffusion_rflow_tiny"] if args.objective == "rflow" else []
    capped.append(train_stage([py, "-m", "train.train_diffusion", f"experiment={args.dataset}_diffusion_cpu",
                               *stage2_model, f"model.first_stage_ckpt={stage1}", *common],
                              out / "diffusion", steps["diffusion"], cap, commands))  # fmt: skip
    stage2 = out / "diffusion" / "checkpoints" / "last.ckpt"

    # 3. the training and held-out subjects as files (what a user would have on disk)
    from diffusion.generation.pipeline import output_units

    dataset_cfg = dataset_config(data_dir, args.dataset)
    class_names = [str(c) for c in dataset_cfg.class_names]
    data_range = tuple(output_units(dataset_cfg.get("intensity"))["data_range"])
    window = figure_window(dataset_cfg)
    ids = export_config_split(dataset_cfg, out / "data" / "test", "test")
    train_ids = export_config_split(dataset_cfg, out / "data" / "train", "train")
    log.info("exported %d test and %d training subjects to %s", len(ids), len(train_ids), out / "data")
    test, train = out / "data" / "test", out / "data" / "train"

    # 4. generation from the held-out label maps (and from the training label maps, for the augmentation test)
    # sampler and steps: the checkpoint's own (sampler, sample_steps of diffusion_rflow_tiny or diffusion_tiny)
    steps = ["--steps", str(args.steps)] if args.steps else []
    gen_opts = [*steps, "--seed", "0", "--batch-size", "4"]
    for split_dir, dest in ((test, "synthetic"), (train, "synthetic_train")):
        labels = str(split_dir / "labels")
        run([py, "-m", "scripts.generate", "--ckpt", str(stage2), "--labels", labels, "--out", str(out / dest),
             *gen_opts], commands)  # fmt: skip

    # 5. evaluation: image metrics + privacy audit, then the Dice protocol and the augmentation experiment
    metrics = (args.metrics or available_metrics()) + ",privacy"
    report = out / "report"
    # every folder's range is read from its run record (evaluation needs a stated or recorded range, never a default)
    run(
        [
            py,
            "-m",
            "evaluation.compute_metrics",
            "--real",
            str(test / "images"),
            "--fake",
            str(out / "synthetic"),
            "--labels",
            str(test / "labels"),
            "--train",
            str(train / "images"),
            "--metrics",
            metrics,
            "--out",
            str(report / "metrics.json"),
        ],
        commands,
    )
    run([py, "-m", "evaluation.class_intensity", "--real", str(test / "images"), "--fake", str(out / "synthetic"),
         "--labels", str(test / "labels"), "--class-names", *class_names,
         "--out", str(report / "class_intensity.json")], commands)  # fmt: skip
    seg = ["--num-classes", str(len(class_names)), "--steps", str(args.seg_steps), "--seed", "0"]
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "train",
            "--images",
            str(train / "images"),
            "--labels",
            str(train / "labels"),
            *seg,
            "--out",
            str(out / "segmenter" / "real.pt"),
        ],
        commands,
    )
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "evaluate",
            "--model",
            str(out / "segmenter" / "real.pt"),
            "--labels",
            str(test / "labels"),
            "--real",
            str(test / "images"),
            "--fake",
            str(out / "synthetic"),
            "--class-names",
            *class_names,
            "--out",
            str(report / "dice.json"),
        ],
        commands,
    )
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "augment",
            "--train-images",
            str(train / "images"),
            "--train-labels",
            str(train / "labels"),
            "--synth-images",
            str(out / "synthetic_train"),
            "--synth-labels",
            str(train / "labels"),
            "--test-images",
            str(test / "images"),
            "--test-labels",
            str(test / "labels"),
            "--class-names",
            *class_names,
            *seg,
            "--out",
            str(report / "augment.json"),
        ],
        commands,
    )

    # 5a. edit a real scan (mni152): one test subject with CSF grown and grey matter shrunk, an atrophy-like change;
    # then the edit metrics on every test subject (in-region fidelity against both baselines, segmenter adherence)
    edit_lines = edit_stage(out, stage2, ids, test, report, commands) if args.dataset == "mni152" else []

    # 5b. the labels stage: new label maps and their images
    label_tables, pair_lines = [], []
    if label_training is not None:
        capped += label_training.wait()
        commands += label_commands
        label_tables, pair_lines = labels_stage(args, out, stage2, class_names, commands, data_range, window)

    # 6. report
    capped = [note for note in capped if note]
    budget_lines = [f"**Safety cap:** {note}." for note in capped] + [""] if capped else []
    write_report(out, args.dataset, t0, ids, train_ids, class_names, window,
                 budget_lines + edit_lines + label_tables, commands, pair_lines)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
