"""What the evaluation command-line tools share: help format, output checks, exit code 2 for user errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from dataset import DataError
from dataset.files import check_output_dir, install_signal_cleanup

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every option's default and keeps the description's line breaks.

    Not shown: ``None`` (the help says what happens then), ``False`` of an on/off flag, required options.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def check_output_files(
    paths: list[Path], overwrite: bool, ours: Callable[[Path], bool] | None = None, what: str = "--out"
) -> None:
    """Check every output file before any expensive work.

    Each file's folder must be (or become) a writable folder (``dataset.files.check_output_dir``), the file
    must not be a folder, and an existing file is replaced only with ``overwrite``, and then only if
    ``ours(path)`` says this project wrote it (``--overwrite`` never replaces someone else's file).

    Raises:
        DataError: a folder that is a file or not writable, an output that is a folder, a foreign file.
        FileExistsError: an output exists and ``overwrite`` is False (naming every such file).
    """
    existing = []
    for path in map(Path, paths):
        check_output_dir(path.parent, what=f"{what} {path}: folder")
        if path.is_dir():
            raise DataError(f"{what} {path} is an existing folder; name a file")
        if path.exists():
            if overwrite and ours is not None and not ours(path):
                raise DataError(
                    f"{what} {path} exists and was not written by this project; --overwrite only replaces our "
                    "own outputs: move it away or choose another name"
                )
            existing.append(str(path))
    if existing and not overwrite:
        raise FileExistsError(f"output exists: {', '.join(existing)}; pass --overwrite to replace it")


def run_cli(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace, list[str]], object], argv: list[str] | None
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), call ``command(args, argv)`` and return the exit status.

    A user or data error (``ValueError``, hence ``dataset.DataError``; ``FileExistsError`` for an output that
    needs ``--overwrite``; ``FileNotFoundError``, hence a missing weight file) is logged in one line and gives 2.
    SIGTERM and SIGHUP remove temporary files before exiting (``dataset.files.install_signal_cleanup``).
    The parser must define ``--log-level``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    install_signal_cleanup()
    try:
        command(args, argv)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0


def add_range_arguments(p: argparse.ArgumentParser, real_what: str, fake_what: str) -> None:
    """``--data-range`` / ``--real-range`` / ``--fake-range`` / ``--clip``, the same in every evaluation tool.

    There is no default range: without these options the range recorded with the files is used
    (``evaluation.intensity``), and without a record the tool stops and shows the volumes' observed min/max.
    """
    p.add_argument(
        "--data-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="intensity range the volumes are stored in, mapped to [0, 1] (e.g. -1 1, or -1000 1000 for CT in "
        "HU). Default: the range recorded with the files (generation.json of scripts/generate.py, manifest.json "
        "of preprocessing); without a record this option is required",
    )
    p.add_argument("--real-range", type=float, nargs=2, metavar=("LO", "HI"), help=f"--data-range for {real_what}")
    p.add_argument("--fake-range", type=float, nargs=2, metavar=("LO", "HI"), help=f"--data-range for {fake_what}")
    p.add_argument("--clip", action="store_true", help="clip voxels outside the range (counted) instead of failing")
