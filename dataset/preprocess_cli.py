"""Command-line options shared by ``scripts/preprocess_<dataset>.py`` (errors and exit codes: ``dataset.cli``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from dataset.cli import TIMED_LOG_FORMAT, ArgumentParser, finite_float, float_in, positive_int, run_cli
from dataset.files import OutputFolder
from dataset.preprocess import PreprocessOptions

log = logging.getLogger(__name__)


def build_parser(prog: str, description: str | None, modality: str) -> argparse.ArgumentParser:
    """Parser with the options every preprocessing script shares.

    Args:
        prog: program name shown in ``--help``.
        description: help text (the script's docstring).
        modality: ``ct`` (default intensity: CT window) or ``mr`` (default: percentiles).
    """
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="raw data folder (layout: see the dataset module / config)")
    parser.add_argument("--dst", required=True, help="output folder for blocks and manifest.json")
    parser.add_argument(
        "--block-size",
        nargs=3,
        type=positive_int,
        default=[32, 256, 256],
        metavar=("D", "H", "W"),
        help="block size in voxels, D = slice axis (default: 32 256 256)",
    )
    parser.add_argument(
        "--sampler",
        choices=["grid", "random"],
        default="grid",
        help="grid: blocks covering each volume; random: seeded random starts (default: grid)",
    )
    parser.add_argument(
        "--blocks-per-volume",
        type=positive_int,
        default=None,
        help="number of blocks per volume for --sampler random (default: the grid's count)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split and random sampler")
    parser.add_argument(
        "--val-frac", type=float_in(0, 1, hi_open=True), default=0.1, help="fraction of patients for validation"
    )
    parser.add_argument(
        "--test-frac", type=float_in(0, 1, hi_open=True), default=0.1, help="fraction of patients for testing"
    )
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float_in(0, None, lo_open=True),
        default=None,
        metavar=("D", "H", "W"),
        help="resample to this voxel size in mm before cutting (default: keep native voxels)",
    )
    default_kind = "ct_window" if modality == "ct" else "percentile"
    parser.add_argument(
        "--intensity",
        choices=["ct_window", "percentile", "reference"],
        default=default_kind,
        help=f"intensity normalisation (default: {default_kind}; reference = per-block min-max)",
    )
    parser.add_argument(
        "--hu-window",
        nargs=2,
        type=finite_float,
        default=[-1000.0, 1000.0],
        metavar=("MIN", "MAX"),
        help="HU window for --intensity ct_window (default: -1000 1000)",
    )
    parser.add_argument(
        "--percentiles",
        nargs=2,
        type=float_in(0, 100),
        default=[0.5, 99.5],
        metavar=("LOW", "HIGH"),
        help="percentiles for --intensity percentile (default: 0.5 99.5)",
    )
    parser.add_argument(
        "--keep-background",
        action="store_true",
        help="also write blocks whose labels are all background (default: skip and count them)",
    )
    parser.add_argument("--label-table", default=None, help="YAML label table replacing the shipped one")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset this project wrote in --dst (recognised by its manifest; nothing else is deleted)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    """Turn parsed arguments into :class:`PreprocessOptions` (validated)."""
    intensity: dict[str, Any] = {"kind": args.intensity}
    if args.intensity == "ct_window":
        intensity.update(hu_min=args.hu_window[0], hu_max=args.hu_window[1])
    elif args.intensity == "percentile":
        intensity.update(lower=args.percentiles[0], upper=args.percentiles[1])
    options = PreprocessOptions(
        block_size=tuple(args.block_size),
        sampler=args.sampler,
        blocks_per_volume=args.blocks_per_volume,
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        intensity=intensity,
        spacing=tuple(args.spacing) if args.spacing else None,
        skip_background=not args.keep_background,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    options.validate()
    return options


def run_preprocess(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    job: Callable[[argparse.Namespace, PreprocessOptions], dict[str, Any]],
) -> int:
    """Parse ``argv``, validate the options, run ``job(args, options)`` through :func:`dataset.cli.run_cli`.

    Bad arguments, bad data or a refused overwrite exit with status 2 and one line; SIGTERM/SIGHUP remove the
    staging folder and temporary files on the way out.

    Returns:
        0 on success, 2 on a user error.
    """

    def command(args: argparse.Namespace, _argv: list[str]) -> None:
        options = options_from_args(args)
        # --dst is claimed like every output folder: not a link, locked against a second run for the whole job
        with OutputFolder(args.dst, args.overwrite, what="--dst"):
            manifest = job(args, options)
        log.info("done: %s", dict(manifest.get("counts", {})))

    return run_cli(parser, command, argv, log_format=TIMED_LOG_FORMAT)
