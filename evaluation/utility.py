"""Do new (image, label) pairs help a segmenter? The utility experiment of the ``labels`` stage (SPEC section 11).

    python evaluation/utility.py --train-images TR_IMG --train-labels TR_LAB --test-images TE_IMG \
        --test-labels TE_LAB --synth-images SYN_IMG --new-images NEW_IMG --new-labels NEW_LAB \
        --class-names background ... --data-range -1 1 --regimes 2 4 8 --seeds 0 1 2 --steps 300 --out utility.json

Four training sets per data-scarce regime (n real training subjects, drawn with the seed) and seed:

- (a) ``real``: the n real subjects;
- (b) ``real+synth``: plus the images generated from those n subjects' real label maps (``--synth-images``,
  ``<id>_s0`` paired with ``--train-labels``);
- (c) ``real+new``: plus n pairs generated from *new* label maps (``--new-images`` / ``--new-labels``, drawn with
  the seed), the same number of added volumes as (b), so (c) - (b) isolates what new maps add;
- (d) ``new``: the generated pairs only (all of them).

Each segmenter (``evaluation.segmenter.train_segmenter``, same steps, seed and schedule for all four) is tested
on the real test set: Dice per foreground class (``evaluation.dice``), mean over test volumes. Reported per regime
and arm: per-class and mean Dice, mean +- std over seeds; the paired differences (c) - (a) and (c) - (b) of the
mean Dice, per regime and pooled over all (regime, seed) pairs, with a two-sided 95 % Student-t interval over
those pairs (``n - 1`` degrees of freedom; with one pair there is no interval).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from dataset.cli import ArgumentParser, check_unique, finite_float, nonnegative_int, positive_int, run_cli
from dataset.files import check_output_files
from dataset.label_table import recorded_label_table
from evaluation.cli_common import HelpFormatter
from evaluation.dice import summarise_dice
from evaluation.intensity import IntensityRange
from evaluation.parallel import run_tasks
from evaluation.report import header, report_paths, write_report
from evaluation.segmenter import Case, SegConfig, dice_of_cases, load_cases, train_segmenter

logger = logging.getLogger(__name__)

ARMS = ("real", "real+synth", "real+new", "new")


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean and two-sided Student-t confidence interval of paired differences (None bounds for n < 2)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    n = arr.size
    mean = float(arr.mean()) if n else math.nan
    if n < 2:
        return {"n": int(n), "mean": mean, "low": None, "high": None, "level": level}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return {"n": int(n), "mean": mean, "low": mean - half, "high": mean + half, "level": level}


def draw_subjects(real: list[Case], n_real: int, rng: np.random.Generator) -> list[Case]:
    """The ``n_real`` real training subjects of a regime (arm (a)), drawn without replacement, in input order."""
    if n_real > len(real):
        raise ValueError(f"regime {n_real} needs {n_real} real training subjects, there are {len(real)}")
    return [real[i] for i in sorted(rng.choice(len(real), n_real, replace=False))]


def training_sets(
    real: list[Case], synth: list[Case], new: list[Case], n_real: int, seed: int
) -> dict[str, list[Case]]:
    """The four training sets of one (regime, seed): see the module docstring."""
    rng = np.random.default_rng(seed)
    chosen = draw_subjects(real, n_real, rng)
    if n_real > len(new):
        raise ValueError(f"regime {n_real} needs {n_real} generated pairs for (c), there are {len(new)}")
    ids = {c.id for c in chosen}
    synth_of = [c for c in synth if c.id in ids]
    if len(synth_of) < n_real:
        missing = sorted(ids - {c.id for c in synth_of})
        raise ValueError(f"no image generated from the real training map(s) {missing} in --synth-images")
    added = [new[i] for i in sorted(rng.choice(len(new), n_real, replace=False))]
    return {"real": chosen, "real+synth": chosen + synth_of, "real+new": chosen + added, "new": list(new)}


def run_experiment(
    real: list[Case],
    synth: list[Case],
    new: list[Case],
    test: list[Case],
    class_names: list[str],
    regimes: list[int],
    seeds: list[int],
    steps: int,
    jobs: int = 1,
) -> dict:
    """Train and test every (regime, seed, arm), in ``jobs`` processes; return per-run Dice and the summaries."""
    keys, tasks = [], []
    for n_real in regimes:
        for seed in seeds:
            for arm, cases in training_sets(real, synth, new, n_real, seed).items():
                keys.append({"regime": n_real, "seed": seed, "arm": arm, "n_train": len(cases)})
                tasks.append((cases, test, class_names, steps, seed))
    runs = []
    for key, result in zip(keys, run_tasks(train_and_test, tasks, jobs, desc="segmenters")):
        runs.append(key | result)
        logger.info("regime %d seed %d %-10s mean Dice %.3f", key["regime"], key["seed"], key["arm"], result["mean"])
    return {"runs": runs, **summarise(runs, class_names[1:], regimes)}


def train_and_test(cases: list[Case], test: list[Case], class_names: list[str], steps: int, seed: int) -> dict:
    """One segmenter of the experiment: trained on ``cases``, tested on ``test``; mean and per-class Dice."""
    k = len(class_names)
    net, info = train_segmenter(cases, SegConfig(num_classes=k, steps=steps, seed=seed), progress=False)
    dice = summarise_dice(dice_of_cases(net, test, tuple(info["window"]), k), class_names)
    return {"mean": dice["mean"], "per_class": {c: v["mean"] for c, v in dice["per_class"].items()},
            "loss_last_10pct": info["loss_last_10pct"]}  # fmt: skip


def summarise(runs: list[dict], names: list[str], regimes: list[int]) -> dict:
    """Mean +- std over seeds per (regime, arm), and the paired differences with t-intervals."""
    table: dict = {}
    for n_real in regimes:
        table[str(n_real)] = {}
        for arm in ARMS:
            sel = [r for r in runs if r["regime"] == n_real and r["arm"] == arm]
            means = np.array([r["mean"] for r in sel], dtype=np.float64)
            table[str(n_real)][arm] = {
                "mean": float(np.nanmean(means)), "std": float(np.nanstd(means)), "n_seeds": len(sel),
                "per_class": {c: {"mean": float(np.nanmean([r["per_class"][c] for r in sel])),
                                  "std": float(np.nanstd([r["per_class"][c] for r in sel]))} for c in names},
            }  # fmt: skip

    def diffs(arm_x: str, arm_y: str, regime: int | None) -> list[float]:
        keyed = {(r["regime"], r["seed"], r["arm"]): r["mean"] for r in runs}
        return [keyed[(g, s, arm_x)] - keyed[(g, s, arm_y)] for (g, s, a) in keyed
                if a == arm_x and (regime is None or g == regime)]  # fmt: skip

    differences = {}
    for x, y in (("real+new", "real"), ("real+new", "real+synth")):
        key = f"({x}) - ({y})"
        differences[key] = {"pooled": t_interval(diffs(x, y, None))}
        for n_real in regimes:
            differences[key][str(n_real)] = t_interval(diffs(x, y, n_real))
    return {"table": table, "differences": differences}


def markdown(report: dict) -> str:
    """The utility table: mean Dice +- std per regime and arm, then the paired differences."""
    res = report["results"]
    lines = ["## Utility of new (image, label) pairs (real test set, mean foreground Dice)", "",
             f"Segmenter steps: {report['settings']['steps']}; seeds: {report['settings']['seeds']}.", "",
             "| real subjects | " + " | ".join(ARMS) + " |", "|---" * (len(ARMS) + 1) + "|"]  # fmt: skip
    for n_real, arms in res["table"].items():
        lines.append(
            f"| {n_real} | " + " | ".join(f"{arms[a]['mean']:.3f} ± {arms[a]['std']:.3f}" for a in ARMS) + " |"
        )
    lines += ["", "| paired difference | regime | mean | 95 % t-interval | pairs |", "|---|---|---|---|---|"]
    for key, by in res["differences"].items():
        for regime, d in by.items():
            ci = "n/a" if d["low"] is None else f"[{d['low']:.3f}, {d['high']:.3f}]"
            lines.append(f"| {key} | {regime} | {d['mean']:.3f} | {ci} | {d['n']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    for name, what in (("train-images", "real training images"), ("train-labels", "real training label maps"),
                       ("test-images", "real test images"), ("test-labels", "real test label maps"),
                       ("synth-images", "images generated from the real training maps (<id>_s0)"),
                       ("new-images", "images of the generated pairs (<id>_s0)"),
                       ("new-labels", "new (generated) label maps of those pairs")):  # fmt: skip
        p.add_argument(f"--{name}", required=True, type=Path, help=what)
    add_experiment_arguments(p, seeds=[0, 1, 2], out_help="JSON report (Markdown next to it)")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=300,
        help="optimiser steps of every segmenter (choose with segmenter_curve.py)",
    )
    return p


def add_experiment_arguments(p: argparse.ArgumentParser, seeds: list[int], out_help: str) -> None:
    """The options the utility experiment and its learning curve share (classes, range, regimes, seeds, jobs, out)."""
    p.add_argument("--class-names", nargs="+", required=True, help="K names, background first")
    p.add_argument("--data-range", nargs=2, type=finite_float, required=True, help="image intensity range LO HI")
    p.add_argument(
        "--regimes", nargs="+", type=positive_int, default=[2, 4, 8], help="numbers of real training subjects"
    )
    p.add_argument(
        "--seeds", nargs="+", type=nonnegative_int, default=seeds, help="seeds (subject draw, init, batches)"
    )
    p.add_argument(
        "--jobs", type=positive_int, default=1, help="segmenters trained at once, one process each (<= cores)"
    )
    p.add_argument("--out", required=True, type=Path, help=out_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing report of ours")
    p.add_argument("--log-level", default="info", help="logging level")


def check_experiment_options(args: argparse.Namespace) -> None:
    """Options the utility experiment and its learning curve share: a repeated class, regime or seed is refused.

    A repeated seed would count twice in the mean and the t-interval but compare one pair; a repeated class name
    would show one class's numbers under two names.
    """
    for values, what in ((args.class_names, "--class-names"), (args.regimes, "--regimes"), (args.seeds, "--seeds")):
        check_unique(values, what)


def command(args: argparse.Namespace, argv: list[str]) -> dict:
    from dataset.files import read_run_record

    json_path, md_path = report_paths(args.out)
    check_output_files([json_path, md_path], args.overwrite, ours=lambda _p: read_run_record(json_path) is not None)
    if args.steps < 1 or min(args.regimes) < 1 or args.jobs < 1:
        raise ValueError("--steps, --regimes and --jobs must be >= 1")
    check_experiment_options(args)
    names = list(args.class_names)
    k = len(names)
    rng = IntensityRange(*args.data_range, clip=True, source="the command line (--data-range)")
    # a model trained with a label table writes the user's ids, recording the table beside the new pairs
    folders = (args.new_labels, args.new_images, args.synth_images, args.train_labels, args.test_labels)
    table = recorded_label_table(*folders)
    real = load_cases(args.train_images, args.train_labels, k, rng, table)
    synth = load_cases(args.synth_images, args.train_labels, k, rng, table)
    new = load_cases(args.new_images, args.new_labels, k, rng, table)
    test = load_cases(args.test_images, args.test_labels, k, rng, table)
    results = run_experiment(real, synth, new, test, names, args.regimes, args.seeds, args.steps, args.jobs)
    report = {**header("utility", argv), "class_names": names,
              "settings": {"regimes": args.regimes, "seeds": args.seeds, "steps": args.steps,
                           "data_range": list(args.data_range)},
              "intensity": rng.describe(), "results": results}  # fmt: skip
    write_report(args.out, report, markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
