"""What the evaluation command-line tools share: help format and the intensity-range options.

Output checks and the error contract are the shared layer in ``dataset.files`` and ``dataset.cli``.
"""

from __future__ import annotations

import argparse

from dataset.cli import finite_float


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every option's default and keeps the description's line breaks.

    Not shown: ``None`` (the help says what happens then), ``False`` of an on/off flag, required options.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def add_range_arguments(p: argparse.ArgumentParser, real_what: str, fake_what: str) -> None:
    """``--data-range`` / ``--real-range`` / ``--fake-range`` / ``--clip``, the same in every evaluation tool.

    There is no default range: without these options the range recorded with the files is used
    (``evaluation.intensity``), and without a record the tool stops and shows the volumes' observed min/max.
    """
    p.add_argument(
        "--data-range",
        type=finite_float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="intensity range the volumes are stored in, mapped to [0, 1] (e.g. -1 1, or -1000 1000 for CT in "
        "HU). Default: the range recorded with the files (generation.json of scripts/generate.py, manifest.json "
        "of preprocessing); without a record this option is required",
    )
    p.add_argument(
        "--real-range", type=finite_float, nargs=2, metavar=("LO", "HI"), help=f"--data-range for {real_what}"
    )
    p.add_argument(
        "--fake-range", type=finite_float, nargs=2, metavar=("LO", "HI"), help=f"--data-range for {fake_what}"
    )
    p.add_argument("--clip", action="store_true", help="clip voxels outside the range (counted) instead of failing")
