"""A run you can read: one log line per validation, a summary at the end, curves in the run folder, quiet logs.

:class:`RunConsole` is a Lightning callback (config/callbacks/default.yaml) that

- logs one line per validation: ``validation step 120 (epoch 5): rec_loss 0.0812 | psnr 22.41 dB | ...``,
  every ``val/*`` metric with 4 significant digits, the monitored one first, and whether it is a new best;
- logs a summary when fitting ends: the best value of the monitored metric and its step, the stop reason
  (steps, time budget), and where the best and last checkpoints and the curves are;
- redraws ``curves_train.png`` / ``curves_val.png`` in the run folder from the CSV logger's file
  (:mod:`train.curves`) at every validation and at the end;
- keeps the logs to one format and free of noise our own configs cause (``quiet``): Lightning's advertising
  tips are dropped, warnings go through ``logging`` (one format, into the run's log file), the "fewer batches
  than log_every_n_steps" warning is silenced (tiny datasets), and so is the "modules in eval mode" notice of
  a stage whose frozen parts (the first stage, EMA copies) are in eval mode by design; with stderr not a
  terminal (a Slurm log, ``> file``) the progress bar is turned off, since its carriage-return frames are
  unreadable in a file, and this callback's lines say how the run goes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import types
import warnings
from pathlib import Path

import pytorch_lightning as pl

log = logging.getLogger(__name__)

#: Submodules a stage keeps in eval mode on purpose (frozen first stage / label autoencoder, EMA copies).
FROZEN_BY_DESIGN = ("first_stage", "label_ae", "ema")
_TIP_PREFIX = "💡 Tip"
_FEW_BATCHES = r"The number of training batches \(\d+\) is smaller than the logging interval"
#: Lightning's own use of a torch API that newer torch deprecates (nothing a user can act on).
_LEAFSPEC = r".*isinstance\(treespec, LeafSpec\)` is deprecated"
_EVAL_MODE = r"Found \d+ module\(s\) in eval mode at the start of training"


class _DropTips(logging.Filter):
    """Drop Lightning's advertising tips (``💡 Tip: ... litlogger / litmodels``); keep everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


def quiet_lightning() -> None:
    """Silence what our own configs make Lightning say needlessly; idempotent.

    Tips are dropped at the Lightning loggers that emit them; warnings are routed to ``logging`` (so they have
    the run's log format and reach its log file); the small-epoch logging-interval warning is ignored.
    """
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message=_FEW_BATCHES)
    warnings.filterwarnings("ignore", message=_LEAFSPEC)


def _epoch_only_description(bar: pl.callbacks.RichProgressBar, current_epoch: int) -> str:
    """The rich progress bar's training description without the epoch total (there is none: max_epochs -1)."""
    text = f"Epoch {current_epoch}"
    width = len(bar.validation_description)  # same padding as Lightning's, against flicker
    return f"{text:{width}}" if width > len(text) else text


def format_metrics(metrics: dict[str, float], first: str | None = None) -> str:
    """``rec_loss 0.0812 | psnr 22.41 dB | ...``: 4 significant digits, ``first`` (the monitored metric) first."""
    names = sorted(metrics, key=lambda k: (k != first, k))
    parts = []
    for name in names:
        short = name.split("/", 1)[-1]
        value = metrics[name]
        unit = " dB" if "psnr" in short else ""
        parts.append(f"{short} {value:.4g}{unit}")
    return " | ".join(parts)


class RunConsole(pl.Callback):
    """Validation lines, an end-of-fit summary, curves in the run folder (see the module docstring).

    Args:
        out_dir: the run folder (curves go here; the CSV log is found through the trainer's CSVLogger).
        curves: draw the curves (at every validation and at the end).
        quiet: install :func:`quiet_lightning` and turn the progress bar off when stderr is not a terminal.
    """

    def __init__(self, out_dir: str | None = None, curves: bool = True, quiet: bool = True) -> None:
        super().__init__()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.curves = curves
        self.quiet = quiet
        self.history: list[tuple[int, dict[str, float]]] = []
        self.best: tuple[int, float] | None = None
        self._t0: float | None = None
        if quiet:
            quiet_lightning()  # before the Trainer exists: it prints a tip when it is built

    # ------------------------------------------------------------------------------------------ monitor
    @staticmethod
    def _monitor(trainer: pl.Trainer) -> tuple[str | None, str]:
        cb = trainer.checkpoint_callback
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.monitor:
            return cb.monitor, cb.mode
        return None, "min"

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if self.quiet and not sys.stderr.isatty():
            if bar is not None and bar.is_enabled:
                bar.disable()
                log.info("stderr is not a terminal: progress bar off; one line per validation instead")
        elif isinstance(bar, pl.callbacks.RichProgressBar) and trainer.max_epochs == -1:
            # Our runs end by max_steps / max_time (max_epochs -1): the rich bar's "Epoch 82/-2" would be nonsense.
            bar._get_train_description = types.MethodType(_epoch_only_description, bar)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()
        if self.quiet and any(hasattr(pl_module, name) for name in FROZEN_BY_DESIGN[:2]):
            # this stage freezes a pretrained part (first stage / label autoencoder) in eval mode on purpose
            warnings.filterwarnings("ignore", message=_EVAL_MODE)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        if not metrics:
            return
        step = int(trainer.global_step)
        self.history.append((step, metrics))
        monitor, mode = self._monitor(trainer)
        note = ""
        if monitor in metrics and math.isfinite(metrics[monitor]):
            value = metrics[monitor]
            if self.best is None or (value < self.best[1] if mode == "min" else value > self.best[1]):
                self.best = (step, value)
                note = " (new best)"
        log.info(
            "validation step %d (epoch %d): %s%s", step, trainer.current_epoch, format_metrics(metrics, monitor), note
        )
        if self.curves:
            self._draw(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        monitor, mode = self._monitor(trainer)
        elapsed = time.monotonic() - self._t0 if self._t0 is not None else float("nan")
        log.info(
            "training ended at step %d (epoch %d) after %.0f s: %s",
            trainer.global_step,
            trainer.current_epoch,
            elapsed,
            self._stop_reason(trainer),
        )
        if self.best is not None:
            log.info("best %s %.4g at step %d (mode %s)", monitor, self.best[1], self.best[0], mode)
        elif monitor:
            log.info("no validation of %s ran: there is no best checkpoint, only last.ckpt", monitor)
        cb = trainer.checkpoint_callback
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            log.info(
                "checkpoints in %s: best %s, last %s",
                cb.dirpath,
                Path(cb.best_model_path).name if cb.best_model_path else "-",
                Path(cb.last_model_path).name if cb.last_model_path else "-",
            )
        if self.curves:
            written = self._draw(trainer)
            if written:
                log.info("curves: %s", ", ".join(str(p) for p in written))

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _stop_reason(trainer: pl.Trainer) -> str:
        if trainer.interrupted:
            return "interrupted"
        if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            return f"max_steps={trainer.max_steps} reached"
        timer = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
        if timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0:
            return "max_time budget used up"
        if trainer.should_stop:
            return "stopped by a callback (early stopping or the time budget)"
        return "max_epochs reached"

    def _draw(self, trainer: pl.Trainer) -> list[Path]:
        """Redraw the curves from the CSV logger's file; a failure is logged, never fatal to training."""
        from train.curves import write_curves

        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, pl.loggers.CSVLogger)), None)
        if csv_logger is None:
            return []
        try:
            csv_logger.save()  # flush the buffered rows into metrics.csv
            csv_path = Path(csv_logger.experiment.metrics_file_path)
            out_dir = self.out_dir or Path(trainer.default_root_dir)
            if not csv_path.is_file():
                return []
            return write_curves(csv_path, out_dir, title=f"{out_dir.parent.name}/{out_dir.name}")
        except (OSError, ValueError) as err:
            log.warning("could not draw the curves: %s", err)
            return []
