"""How many steps does the utility experiment's segmenter need? Real-only learning curves and the budget they give.

    python evaluation/segmenter_curve.py --train-images TR_IMG --train-labels TR_LAB --val-images VA_IMG \
        --val-labels VA_LAB --class-names background ... --data-range -1 1 --regimes 2 4 8 --seeds 0 \
        --steps 1500 --eval-every 100 --out curve.json

For every regime (n real training subjects, drawn with the seed exactly as arm (a) of ``evaluation/utility.py``
draws them) and seed, one segmenter (``evaluation.segmenter.train_segmenter``, the utility experiment's
network, optimiser and schedule) is trained on the real subjects only, and its mean foreground Dice on the
*validation* split is recorded every ``--eval-every`` steps. The test split is not looked at, so the budget is
not tuned on the data the utility experiment reports.

The budget: per regime, the seed-mean curve's first evaluated step whose Dice is within ``--tolerance`` of that
curve's best (it has levelled off there: later steps gain less than the tolerance); the reported budget is the
largest of these over the regimes, so every regime's baseline has levelled off. ``evaluation/utility.py
--steps`` takes it (``scripts/utility_protocol.py`` passes it on). Writes the JSON report, a Markdown table and
``<out>.png`` (one panel per regime, Dice against steps).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from dataset.cli import ArgumentParser, float_in, positive_int, run_cli
from dataset.files import check_output_files
from evaluation.cli_common import HelpFormatter
from evaluation.intensity import IntensityRange
from evaluation.parallel import run_tasks
from evaluation.report import header, report_paths, write_report
from evaluation.segmenter import Case, SegConfig, load_cases, train_segmenter
from evaluation.utility import add_experiment_arguments, check_experiment_options, draw_subjects

logger = logging.getLogger(__name__)


def levelled_step(curve: list[list[float]], tolerance: float) -> int:
    """First step of ``[[step, dice], ...]`` (ascending steps) whose Dice is within ``tolerance`` of the best."""
    if not curve:
        raise ValueError("empty learning curve")
    best = max(d for _, d in curve)
    return int(next(s for s, d in curve if d >= best - tolerance))


def mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """Seed-mean of curves evaluated at the same steps: ``[[step, mean dice], ...]``."""
    steps = [[s for s, _ in c] for c in curves]
    if any(s != steps[0] for s in steps):
        raise ValueError("curves to average must be evaluated at the same steps")
    values = np.array([[d for _, d in c] for c in curves], dtype=np.float64)
    return [[int(s), float(v)] for s, v in zip(steps[0], values.mean(0))]


def learning_curve(
    cases: list[Case], val: list[Case], num_classes: int, steps: int, eval_every: int, seed: int
) -> list[list[float]]:
    """``[[step, validation mean Dice], ...]`` of one real-only segmenter (the utility experiment's)."""
    cfg = SegConfig(num_classes=num_classes, steps=steps, seed=seed)
    _, info = train_segmenter(cases, cfg, progress=False, curve_cases=val, curve_every=eval_every)
    return info["curve"]


def run_curves(
    real: list[Case],
    val: list[Case],
    num_classes: int,
    regimes: list[int],
    seeds: list[int],
    steps: int,
    eval_every: int,
    tolerance: float,
    jobs: int = 1,
) -> dict:
    """Train every (regime, seed) on real subjects only, in ``jobs`` processes; return the curves and the budget.

    Every subject draw (and its check that the regime has enough subjects) happens before any training.
    """
    tasks = [(draw_subjects(real, n_real, np.random.default_rng(seed)), val, num_classes, steps, eval_every, seed)
             for n_real in regimes for seed in seeds]  # fmt: skip
    results = iter(run_tasks(learning_curve, tasks, jobs, desc="learning curves"))
    per_regime = {}
    for n_real in regimes:
        curves = [next(results) for _ in seeds]
        for seed, curve in zip(seeds, curves):
            logger.info("regime %d seed %d: val Dice %.3f at step %d", n_real, seed, curve[-1][1], steps)
        mean = mean_curve(curves)
        best_step, best = max(mean, key=lambda p: p[1])
        per_regime[str(n_real)] = {
            "curves": {str(s): c for s, c in zip(seeds, curves)},
            "mean": mean,
            "best": {"step": int(best_step), "dice": best},
            "levelled_step": levelled_step(mean, tolerance),
        }
    budget = max(r["levelled_step"] for r in per_regime.values())
    if budget == steps:
        logger.warning("a curve was still rising at its last step (%d): the budget needs longer curves", steps)
    return {"regimes": per_regime, "budget": budget, "still_rising": budget == steps}


def markdown(report: dict) -> str:
    """Seed-mean validation Dice per regime at a few steps, the levelled-off step and the budget."""
    res, st = report["results"], report["settings"]
    first = next(iter(res["regimes"].values()))["mean"]
    shown = [p[0] for p in first][:: max(1, len(first) // 8)]
    if shown[-1] != first[-1][0]:
        shown.append(first[-1][0])
    lines = ["## Segmenter learning curve (real subjects only, validation split, mean foreground Dice)", "",
             f"Seeds {st['seeds']}; levelled off = first step within {st['tolerance']} of the curve's best; "
             f"budget = the latest of them: **{res['budget']} steps**"
             + (" (still rising at the last step: run longer curves)." if res["still_rising"] else "."), "",
             "| real subjects | " + " | ".join(f"step {s}" for s in shown) + " | best | levelled off at |",
             "|---" * (len(shown) + 3) + "|"]  # fmt: skip
    for n_real, r in res["regimes"].items():
        at = dict((int(s), d) for s, d in r["mean"])
        cells = " | ".join(f"{at[s]:.3f}" for s in shown)
        lines.append(f"| {n_real} | {cells} | {r['best']['dice']:.3f} @ {r['best']['step']} | {r['levelled_step']} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, report: dict) -> Path:
    """One panel per regime: seed-mean validation Dice against steps (best point marked)."""
    from train.curves import plot_panels

    res = report["results"]
    panels = [(f"{n} real subjects: levelled off at {r['levelled_step']}", [tuple(p) for p in r["mean"]], "max")
              for n, r in res["regimes"].items()]  # fmt: skip
    title = f"segmenter validation Dice vs steps (budget {res['budget']})"
    return plot_panels(path, panels, title=title, whole_range=True)  # the Dice can peak early: show all of it


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    for name, what in (
        ("train-images", "real training images"),
        ("train-labels", "real training label maps"),
        ("val-images", "real validation images"),
        ("val-labels", "real validation label maps"),
    ):
        p.add_argument(f"--{name}", required=True, type=Path, help=what)
    add_experiment_arguments(p, seeds=[0], out_help="JSON report (Markdown and PNG next to it)")
    p.add_argument("--steps", type=positive_int, default=1500, help="optimiser steps of each curve")
    p.add_argument("--eval-every", type=positive_int, default=100, help="validation Dice every this many steps")
    p.add_argument(
        "--tolerance", type=float_in(0, 1), default=0.01, help="Dice below the best that counts as levelled off"
    )
    return p


def command(args: argparse.Namespace, argv: list[str]) -> dict:
    from dataset.files import read_run_record

    json_path, md_path = report_paths(args.out)
    png = json_path.with_suffix(".png")
    ours = lambda _p: read_run_record(json_path) is not None  # noqa: E731
    check_output_files([json_path, md_path, png], args.overwrite, ours=ours)
    check_experiment_options(args)
    names = list(args.class_names)
    rng = IntensityRange(*args.data_range, clip=True, source="the command line (--data-range)")
    real = load_cases(args.train_images, args.train_labels, len(names), rng)
    val = load_cases(args.val_images, args.val_labels, len(names), rng)
    results = run_curves(real, val, len(names), args.regimes, args.seeds, args.steps, args.eval_every, args.tolerance,
                         args.jobs)  # fmt: skip
    report = {**header("segmenter_curve", argv), "class_names": names,
              "settings": {"regimes": args.regimes, "seeds": args.seeds, "steps": args.steps,
                           "eval_every": args.eval_every, "tolerance": args.tolerance,
                           "data_range": list(args.data_range), "validation": str(args.val_labels)},
              "intensity": rng.describe(), "results": results}  # fmt: skip
    write_report(args.out, report, markdown(report))
    plot(png, report)
    logger.info("budget: %d steps (report %s)", results["budget"], json_path)
    return report


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
