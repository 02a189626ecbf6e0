"""What the evaluation command-line tools share: parse, set up logging, run, turn known errors into exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)


def run_cli(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace, list[str]], object], argv: list[str] | None
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), call ``command(args, argv)`` and return the exit status.

    A user or data error (``ValueError``, hence ``dataset.DataError``; ``FileExistsError`` for an output that
    needs ``--overwrite``; ``FileNotFoundError``, hence a missing weight file) is logged in one line and gives 2.
    The parser must define ``--log-level``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        command(args, argv)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0
