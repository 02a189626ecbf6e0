"""Checkpoint files that survive a kill, and a resume that survives a damaged checkpoint (SPEC section 10).

- :class:`AtomicCheckpointIO` is the Trainer's checkpoint writer: every checkpoint (``last.ckpt``, ``best-*.ckpt``,
  the Slurm requeue ``hpc_ckpt_N.ckpt``) goes to a temporary file in the checkpoint's own folder, is fsynced and
  then renamed over the old one (:func:`dataset.files.atomic_torch_save`). Lightning's stock writer replaces the
  file in place (an interrupted write leaves a truncated checkpoint, and every requeue then crash-loops on it).
  It also loads with ``weights_only=True``: a checkpoint is data, never code.
- :func:`find_resume_checkpoint` picks the newest checkpoint of a run that actually loads, and warns about every
  newer one it had to skip.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from dataset.files import atomic_torch_save

log = logging.getLogger(__name__)


class UnreadableCheckpoints(FileNotFoundError):
    """A run folder has checkpoints but none of them loads (a user error: exit status 2 at the entry points)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic, same-folder save and a ``weights_only=True`` load."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path``: temp file beside it, fsync, rename (the old file stays until then)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(Path(path), checkpoint)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint as plain data (``weights_only=True`` whatever the caller asks)."""
        if weights_only is False:
            log.warning("loading %s with weights_only=True anyway: a checkpoint must not contain code", path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be resumed from (unreadable, truncated, not a Lightning checkpoint), or ``None``.

    Loads with ``mmap=True`` (no tensor data is read into memory) and ``weights_only=True``.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError...: all mean unusable
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return "not a Lightning training checkpoint (no state_dict / global_step)"
    return None


def _remove_stale_temps(folder: Path) -> None:
    """Delete hidden ``.<name>.ckpt.*.tmp`` files a killed writer left in ``folder`` (rank 0 only, at start)."""
    if rank_zero_only.rank != 0 or not folder.is_dir():
        return
    for tmp in folder.glob(".*.ckpt.*.tmp"):
        log.info("removing %s, left by an interrupted checkpoint write", tmp)
        tmp.unlink(missing_ok=True)


def find_resume_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest readable checkpoint of the run in ``output_dir``, or ``None`` when there is none yet.

    Candidates: ``checkpoints/last.ckpt``, the Slurm requeue checkpoints ``hpc_ckpt_N.ckpt`` and every other
    ``checkpoints/*.ckpt``, newest (modification time) first. A candidate that does not load is skipped with a
    warning and the next one is tried, so one damaged file costs the steps since the previous checkpoint instead of
    the whole run.

    Raises:
        UnreadableCheckpoints: there are checkpoints and none loads (a fresh start would overwrite them).
    """
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    _remove_stale_temps(ckpt_dir)
    _remove_stale_temps(out)
    candidates = {p for p in [*ckpt_dir.glob("*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()}
    # last.ckpt wins a tie: it is written right after a top-k checkpoint of the same step
    ordered = sorted(candidates, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)
    problems = []
    for path in ordered:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        problems.append(f"{path.name}: {problem}")
        log.warning("skipping unreadable checkpoint %s (%s); trying the previous one", path, problem)
    if ordered:
        # starting over here would overwrite them: the user decides (they may be readable by another version)
        raise UnreadableCheckpoints(
            f"no checkpoint in {out} loads ({'; '.join(problems)}); move them away or pass ckpt_path=null with "
            "another paths.output_dir to start a new run"
        )
    return None
