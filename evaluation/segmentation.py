"""Dice protocol: how useful are synthetic volumes to a segmentation network?

Three commands (``python evaluation/segmentation.py CMD ...`` or ``python -m evaluation.segmentation CMD``):

- ``train``: train the segmenter (``evaluation.segmenter``: a MONAI 3D ``UNet``, small CPU default: channels
  8-16-32, one residual unit) with DiceCE on real training volumes (``--images``/``--labels`` folders, matching
  file names), optionally plus extra (e.g. synthetic) volumes; writes a checkpoint (``torch.save`` of
  primitives + state dict).
- ``evaluate``: per-class foreground Dice (``evaluation.dice``) of a trained network on real test volumes and
  on synthetic volumes generated from the same test label maps (``--fake``; names ``<id>`` or ``<id>_s<k>``).
- ``augment``: the augmentation experiment: trains twice with the same seed and schedule, on real only and on
  real + synthetic, and evaluates both on the real test set.

Images are mapped to [0, 1] from their data range (``evaluation.intensity.resolve_range``: stated with
``--data-range``, else recorded with the files, else an error); label maps are integer NIfTI in
[0, num_classes). ``evaluate --predictions DIR`` also writes the predicted label maps, named after the image
files (each name checked with ``dataset.files.check_name`` before any inference). Training samples batches
(and random crops when ``--patch-size`` is given) from a seeded generator; prediction is MONAI sliding-window
inference with the training window. Results go to a JSON report and a Markdown table (``evaluation.report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from dataset.cli import (
    ArgumentParser,
    check_unique,
    float_in,
    nonnegative_int,
    pick_device,
    positive_int,
    run_cli,
)
from dataset.files import (
    check_name,
    check_not_link,
    check_output_dir,
    check_output_files,
    file_sha256,
    read_run_record,
    recorded_outputs,
    write_run_record,
)
from dataset.nifti import strip_nifti_suffix
from evaluation.cli_common import HelpFormatter, add_range_arguments
from evaluation.dice import summarise_dice
from evaluation.intensity import IntensityRange, resolve_range
from evaluation.pairing import pair_folders
from evaluation.report import dice_markdown, header, report_paths, write_report
from evaluation.segmenter import (
    Case,
    SegConfig,
    default_class_names,
    dice_of_cases,
    is_our_checkpoint,
    load_cases,
    load_checkpoint,
    save_checkpoint,
    train_segmenter,
)

logger = logging.getLogger(__name__)

PREDICTIONS_RECORD = "predictions.json"
DICE_DEFINITION = (
    "Dice per foreground class (background excluded), MONAI DiceMetric on argmax predictions; a class absent "
    "from ground truth and prediction is not applicable (excluded, counted); mean = mean of class means"
)


def image_range(
    images: Path, labels: Path, stated: tuple[float, float] | None, options: tuple[str, ...], what: str, clip: bool
) -> IntensityRange:
    """Data range of a folder of images (paired with ``labels``): stated, else recorded, else an error."""
    files = [p.synthetic for p in pair_folders(labels, images)]
    return resolve_range(images, stated, options, what, files, clip)


def _dice_block(
    net: torch.nn.Module,
    cases: list[Case],
    window: tuple,
    names: list[str],
    save_to: list[Path] | None = None,
    overwrite: bool = False,
) -> tuple[dict, list]:
    values = dice_of_cases(net, cases, window, len(names), save_to, overwrite)
    per_volume = [
        {"id": c.id, "image": c.image_path.name, "dice": dict(zip(names[1:], v.tolist()))}
        for c, v in zip(cases, values)
    ]
    return summarise_dice(values, names), per_volume


def _class_names(names: list[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return default_class_names(num_classes)
    check_unique(names, "--class-names")  # a repeated name would show one class's Dice under two columns
    if len(names) != num_classes:
        raise ValueError(f"--class-names needs {num_classes} names (background first), got {len(names)}")
    return list(names)


def _stated(args: argparse.Namespace, side: str) -> tuple[float, float] | None:
    value = getattr(args, f"{side}_range") or args.data_range
    return tuple(value) if value else None


def _range(args: argparse.Namespace, side: str, images: Path, labels: Path, what: str) -> IntensityRange:
    options = ("--data-range", f"--{side}-range")
    return image_range(images, labels, _stated(args, side), options, what, args.clip)


def _check_report(out: Path, overwrite: bool) -> None:
    json_path, md_path = report_paths(out)
    check_output_files([json_path, md_path], overwrite, ours=lambda _p: read_run_record(json_path) is not None)


def _prediction_plan(cases_by_set: dict[str, list[Case]], folder: Path, overwrite: bool) -> dict[str, list[Path]]:
    """Where each predicted label map goes: ``folder/<set>/<image name>``, every name and place checked first.

    ``--overwrite`` replaces only the files the previous run recorded in ``folder/predictions.json``; a
    sub-folder or file that is a symbolic link is refused (nothing is written through a link).
    """
    ours = {p.absolute() for p in recorded_outputs(folder / PREDICTIONS_RECORD)}
    plan: dict[str, list[Path]] = {}
    for set_name, cases in cases_by_set.items():
        # first estimate of the space needed: one uncompressed uint8 label map per case
        need = sum(int(case.label.numel()) for case in cases)
        check_not_link(folder, "--predictions")
        check_not_link(folder / set_name, "--predictions")
        sub = check_output_dir(folder / set_name, min_free_bytes=need, what="--predictions")
        paths = []
        for case in cases:
            stem = check_name(strip_nifti_suffix(case.image_path.name), "image file name")
            paths.append(sub / f"{stem}.nii.gz")
        check_output_files(paths, overwrite, ours=lambda p: p.absolute() in ours, what="--predictions")
        plan[set_name] = paths
    return plan


def _record_predictions(folder: Path, plan: dict[str, list[Path]], model: Path, argv: list[str]) -> None:
    """Run record of the predictions (what made them, which files), so ``--overwrite`` can tell them apart."""
    outputs = sorted(str(p.relative_to(folder)) for paths in plan.values() for p in paths)
    record = {"tool": "evaluation.segmentation evaluate", "command": argv, "model_sha256": file_sha256(model)}
    write_run_record(folder / PREDICTIONS_RECORD, record | {"outputs": outputs})


def _config(args: argparse.Namespace, num_classes: int) -> SegConfig:
    return SegConfig(
        num_classes=num_classes,
        channels=tuple(args.channels),
        num_res_units=args.res_units,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace, argv: list[str]) -> dict:
    """``train``: fit on real (+ extra) volumes and save the checkpoint to ``--out``."""
    pick_device(args.device)
    check_output_files([args.out], args.overwrite, ours=is_our_checkpoint)
    cfg = _config(args, args.num_classes)
    if (args.extra_images is None) != (args.extra_labels is None):
        raise ValueError("--extra-images and --extra-labels go together")
    real_rng = _range(args, "real", args.images, args.labels, "--images")
    fake_rng = None
    if args.extra_images is not None:
        fake_rng = _range(args, "fake", args.extra_images, args.extra_labels, "--extra-images")
    cases = load_cases(args.images, args.labels, cfg.num_classes, real_rng)
    if fake_rng is not None:
        cases += load_cases(args.extra_images, args.extra_labels, cfg.num_classes, fake_rng)
    net, info = train_segmenter(cases, cfg, args.device, not args.no_progress)
    intensity = {"real": real_rng.describe()} | ({"extra": fake_rng.describe()} if fake_rng is not None else {})
    info |= {"command": argv, "intensity": intensity}
    save_checkpoint(args.out, net, cfg, info)
    logger.info("wrote %s", args.out)
    return info


def cmd_evaluate(args: argparse.Namespace, argv: list[str]) -> dict:
    """``evaluate``: Dice of a trained segmenter on real test volumes and on synthetic ones."""
    pick_device(args.device)
    _check_report(args.out, args.overwrite)
    if args.predictions is not None:
        check_not_link(args.predictions, "--predictions")
        check_output_dir(args.predictions, what="--predictions")
    net, cfg, training = load_checkpoint(args.model, args.device)
    names = _class_names(args.class_names, cfg.num_classes)
    ranges = {"real": _range(args, "real", args.real, args.labels, "--real")}
    if args.fake is not None:
        ranges["synthetic"] = _range(args, "fake", args.fake, args.labels, "--fake")
    window = tuple(training["window"])
    folders = {"real": args.real, "synthetic": args.fake}
    cases = {k: load_cases(folders[k], args.labels, cfg.num_classes, rng) for k, rng in ranges.items()}
    plan = _prediction_plan(cases, args.predictions, args.overwrite) if args.predictions is not None else {}
    dice, per_volume = {}, {}
    for set_name, set_cases in cases.items():
        dice[set_name], per_volume[set_name] = _dice_block(
            net, set_cases, window, names, plan.get(set_name), args.overwrite
        )
    if plan:
        _record_predictions(args.predictions, plan, args.model, argv)
    report = header("evaluation.segmentation", argv) | {
        "command_name": "evaluate",
        "model": {"path": args.model, "sha256": file_sha256(args.model), "training": training},
        "class_names": names,
        "definition": DICE_DEFINITION,
        "intensity": {k: rng.describe() for k, rng in ranges.items()},
        "predictions": {k: [str(p) for p in v] for k, v in plan.items()} or None,
        "dice": dice,
        "per_volume": per_volume,
        "notes": {"test label maps": str(args.labels), "inference": f"sliding window {list(window)}, overlap 0.25"},
    }
    write_report(args.out, report, dice_markdown(report))
    return report


def cmd_augment(args: argparse.Namespace, argv: list[str]) -> dict:
    """``augment``: train on real vs real + synthetic (same seed and schedule), test both on real."""
    pick_device(args.device)
    _check_report(args.out, args.overwrite)
    cfg = _config(args, args.num_classes)
    names = _class_names(args.class_names, cfg.num_classes)
    real_rng = _range(args, "real", args.train_images, args.train_labels, "--train-images")
    fake_rng = _range(args, "fake", args.synth_images, args.synth_labels, "--synth-images")
    test_rng = _range(args, "real", args.test_images, args.test_labels, "--test-images")
    real_train = load_cases(args.train_images, args.train_labels, cfg.num_classes, real_rng)
    synth_train = load_cases(args.synth_images, args.synth_labels, cfg.num_classes, fake_rng)
    test = load_cases(args.test_images, args.test_labels, cfg.num_classes, test_rng)
    dice, per_volume, training = {}, {}, {}
    for name, cases in (("real", real_train), ("real + synthetic", real_train + synth_train)):
        net, info = train_segmenter(cases, cfg, args.device, not args.no_progress)
        window = tuple(info["window"])
        dice[name], per_volume[name] = _dice_block(net, test, window, names)
        training[name] = info
    report = header("evaluation.segmentation", argv) | {
        "command_name": "augment",
        "class_names": names,
        "definition": DICE_DEFINITION + "; both networks tested on the real test set",
        "config": asdict(cfg),
        "training": training,
        "intensity": {"real": real_rng.describe(), "synthetic": fake_rng.describe(), "test": test_rng.describe()},
        "dice": dice,
        "per_volume": per_volume,
        "notes": {
            "training sets": f"real {len(real_train)}, real + synthetic {len(real_train) + len(synth_train)} volumes",
            "test set": f"{len(test)} real volumes",
        },
    }
    write_report(args.out, report, dice_markdown(report))
    return report


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", type=Path, required=True, help=out_help)
    add_range_arguments(p, "real images", "synthetic ones")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs written by this tool")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, required=True, help="K, background included")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[8, 16, 32], help="UNet channels per level")
    p.add_argument("--res-units", type=nonnegative_int, default=1, help="residual units per UNet block")
    p.add_argument(
        "--patch-size",
        type=positive_int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="training crop and inference window, divisible by 2^(levels-1); default: whole volumes",
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps")
    p.add_argument("--batch-size", type=positive_int, default=2, help="volumes (or crops) per step")
    p.add_argument("--lr", type=float_in(0, None, lo_open=True), default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds network init, batch order and crops")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (subcommands train, evaluate, augment)."""
    parser = ArgumentParser(prog="segmentation", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", required=True, help="what to run (each has its own --help)")
    report_help = "JSON report path; the Markdown goes next to it with .md (an --out ending in .md names the Markdown)"
    names_help = "class names, background first (default: background, class_1, ...)"
    p = sub.add_parser("train", help="train the segmenter on real (+ extra) volumes", formatter_class=HelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="real training images <id>.nii[.gz]")
    p.add_argument("--labels", type=Path, required=True, help="their label maps, same names")
    p.add_argument("--extra-images", type=Path, help="extra (e.g. synthetic) images, <id>[_s<k>] names")
    p.add_argument("--extra-labels", type=Path, help="label maps of the extra images")
    _training(p)
    _common(p, "checkpoint path (.pt)")
    p = sub.add_parser(
        "evaluate", help="Dice on real test volumes and on synthetic ones", formatter_class=HelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="segmenter checkpoint written by 'train'")
    p.add_argument("--labels", type=Path, required=True, help="test label maps <id>.nii[.gz]")
    p.add_argument("--real", type=Path, required=True, help="real test images <id>.nii[.gz]")
    p.add_argument("--fake", type=Path, help="synthetic images generated from the test label maps")
    p.add_argument("--class-names", nargs="+", help=names_help)
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="also write the predicted label maps to DIR/real/ and DIR/synthetic/, named after the images",
    )
    _common(p, report_help)
    p = sub.add_parser(
        "augment", help="train on real vs real + synthetic, test both on real", formatter_class=HelpFormatter
    )
    for name, text in (
        ("train-images", "real training images"),
        ("train-labels", "their label maps"),
        ("synth-images", "synthetic training images (<id>[_s<k>] names)"),
        ("synth-labels", "the label maps they were generated from"),
        ("test-images", "real test images"),
        ("test-labels", "their label maps"),
    ):
        p.add_argument(f"--{name}", type=Path, required=True, help=text)
    p.add_argument("--class-names", nargs="+", help=names_help)
    _training(p)
    _common(p, report_help)
    return parser


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "augment": cmd_augment}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for a user or data error, reported in one line)."""
    return run_cli(build_parser(), lambda args, argv: COMMANDS[args.command](args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
