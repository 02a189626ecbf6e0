"""The one option and error contract of every command-line tool (SPEC section 10).

- :class:`ArgumentParser`: argparse whose errors are one line (``prog: error: ...``) with exit status 2.
- Option types: :func:`finite_float`, :func:`positive_int`, :func:`nonnegative_int`, :func:`float_in`: no NaN or
  inf anywhere, counts positive, ranges checked while parsing, so nothing runs on a bad number.
- :func:`check_unique`: repeated names or seeds are refused (they would silently change a result).
- :func:`pick_device`: ``--device`` with a GPU that is not there (or ``meta``) is a user error.
- :func:`read_stage_checkpoint`: a missing, unreadable or wrong-stage checkpoint is one line, before any work.
- :func:`run_cli`: parse, set up logging and signal cleanup, run the command; a user error (``ValueError``, hence
  :class:`dataset.contract.DataError`; ``FileExistsError``; ``FileNotFoundError``) is logged in one line and the
  exit status is 2. A traceback means a bug.

The output-folder contract (claim, lock, links, atomic writes, records) is in :mod:`dataset.files`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from dataset.contract import DataError
from dataset.files import install_signal_cleanup, read_checkpoint

logger = logging.getLogger(__name__)

#: Exceptions that are the user's to fix: one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileExistsError, FileNotFoundError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: message (see --help)``) and exit status 2.

    Sub-command parsers made by :meth:`add_subparsers` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (NaN and inf are refused)."""
    return _number(text)


def float_in(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite float in the interval ``lo``..``hi`` (``None``: unbounded; ``*_open``: excluded)."""

    def parse(text: str) -> float:
        value = _number(text)
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        ):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{text} is outside {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            )
        return value

    parse.__name__ = "number"
    return parse


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, steps, sizes)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer (>= 1)")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, indices)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be an integer >= 0")
    return value


def check_finite(value: float | None, what: str) -> float | None:
    """``value`` if it is ``None`` or a finite number, else ``DataError`` (for values not parsed by argparse)."""
    if value is not None and not math.isfinite(float(value)):
        raise DataError(f"{what}={value}: not a finite number")
    return value


def check_unique(values: Iterable[Any] | None, what: str) -> list[Any]:
    """The values as a list; a value given twice is refused (``DataError``): it would change a result silently."""
    values = list(values or [])
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise DataError(f"{what} lists {v!r} twice; give each once")
        seen.add(v)
    return values


def pick_device(name: str, what: str = "--device") -> Any:
    """``--device``: auto, cpu, cuda, cuda:N as a ``torch.device``; a GPU that is not there is a ``DataError``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DataError(f"{what} {name}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"{what} {name}: no CUDA GPU is available on this machine; use {what} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"{what} {name}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type != "cpu":
        raise DataError(f"{what} {name}: only cpu and cuda are supported")
    return device


#: The training stage of a checkpoint, told by a hyperparameter only that stage has (plain data, nothing called).
STAGE_MARKERS: dict[str, str] = {
    "label_diffusion": "label_ae_hparams",
    "diffusion": "first_stage_hparams",
    "vqgan": "n_codes",
    "label_ae": "kl_weight",
}
STAGE_NAMES = {
    "label_diffusion": "label diffusion (train/train_label_diffusion.py)",
    "diffusion": "stage-2 image diffusion (train/train_diffusion.py)",
    "vqgan": "stage-1 VQ-GAN (train/train_vqgan.py)",
    "label_ae": "label autoencoder (train/train_label_ae.py)",
}


def checkpoint_stage(hparams: object) -> str | None:
    """Which stage wrote a checkpoint with these ``hyper_parameters`` (None: not one of ours)."""
    if not isinstance(hparams, dict):
        return None
    return next((stage for stage, key in STAGE_MARKERS.items() if key in hparams), None)


def read_stage_checkpoint(path: str | Path, stage: str, what: str = "--ckpt") -> dict[str, Any]:
    """The ``hyper_parameters`` of a checkpoint of ``stage``; anything else is one ``DataError`` line.

    Raises:
        DataError: missing, a folder, unreadable, not a Lightning checkpoint, or another stage's.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; name a checkpoint file")
    try:
        data = read_checkpoint(path)
    except DataError as err:
        raise DataError(f"{what} {err}") from None
    hparams = data.get("hyper_parameters") if isinstance(data, dict) else None
    found = checkpoint_stage(hparams)
    if found != stage:
        got = f"a {STAGE_NAMES[found]} checkpoint" if found else "not a Med-LSDM checkpoint"
        raise DataError(f"{what} {path}: {got}; expected a {STAGE_NAMES[stage]} checkpoint")
    if "state_dict" not in data:
        raise DataError(f"{what} {path}: the checkpoint holds no weights (state_dict)")
    return dict(hparams)  # type: ignore[arg-type]


def one_line(err: BaseException) -> str:
    """An exception's message on one line (what the user has to fix)."""
    return " ".join(str(err).split()) or type(err).__name__


#: The log lines of the long-running commands (pipeline drivers, preprocessing) carry the time.
TIMED_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_cli(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace, list[str]], object],
    argv: list[str] | None,
    log_format: str = "%(levelname)s %(name)s: %(message)s",
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), call ``command(args, argv)`` and return the exit status.

    A user or data error (:data:`USER_ERRORS`: ``ValueError``, hence ``DataError``; ``FileExistsError`` for an
    output that needs ``--overwrite``; ``FileNotFoundError``) is logged in one line and gives 2; a command may also
    return an ``int`` exit status. A bad option is argparse's one line on stderr (:class:`ArgumentParser`), status
    2, returned rather than raised so ``main(argv)`` behaves the same in-process. SIGTERM and SIGHUP remove
    temporary files before exiting (:func:`dataset.files.install_signal_cleanup`). ``--log-level``, when the
    parser defines it, sets the level.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad option (2, one line on stderr): a status, also in-process
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    level = str(getattr(args, "log_level", None) or "INFO").upper()
    logging.basicConfig(level=level, format=log_format)
    install_signal_cleanup()
    try:
        rc = command(args, argv)
    except USER_ERRORS as err:
        logger.error("%s", one_line(err))
        return 2
    return rc if isinstance(rc, int) else 0
