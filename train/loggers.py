"""Loggers that keep a run's history when the run is resumed (SPEC section 10: logs continue, never restart)."""

from __future__ import annotations

import csv
import io
import logging

from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from dataset.files import atomic_write_text

log = logging.getLogger(__name__)


class _KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted.

    Lightning deletes the file of a log folder it finds non-empty ("Previous log files ... will be deleted"), so a
    resumed run (same output folder, same logger version) lost the history of every earlier run. Here the
    existing header is read back and new rows are appended under it; a new metric key rewrites the file (all rows,
    atomically) with the wider header.
    """

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            header = next(csv.reader(fh), [])
        self.metrics_keys = sorted(set(header))
        log.info("continuing %s (%d columns)", self.metrics_file_path, len(header))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            rows = list(csv.DictReader(fh))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, buf.getvalue())


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same arguments) whose ``metrics.csv`` survives a resume: rows are appended."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingExperimentWriter:
        """The writer (rank 0; a dummy on other ranks, as Lightning's)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
