"""Callbacks shared by both stages."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from dataset.files import atomic_write_json

log = logging.getLogger(__name__)


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always the newest training state.

    Lightning 2.6 writes ``last.ckpt`` only in a step where it also writes a top-k checkpoint, so with a monitor and
    ``save_top_k: 1`` the "last" checkpoint stays at the best validation step. A resume (``ckpt_path=last``, a Slurm
    requeue) would then silently go back to that step, and stage 2 would load a stale stage 1. This subclass writes
    ``last.ckpt`` whenever Lightning considers saving (after validation or at the end of a training epoch)
    and once more when training ends (``max_steps``, ``max_time``), so
    no optimiser step is lost. Arguments are Lightning's.
    """

    _last_step_written: int | None = None

    # Each write comes after Lightning's own save of the same event: a checkpoint written first at a step would make
    # Lightning skip its top-k save of that step (it saves at most once per global step).
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_written = trainer.global_step

    def _write_last(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt unless it holds this step already or this is no fitting step (sanity check, dev run)."""
        if not self.save_last or self._last_step_written == trainer.global_step:
            return
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class VolumeLogger(pl.Callback):
    """Render what the module shows of a validation batch as slice montages (PNG) and GIFs.

    The module provides ``log_volumes(batch) -> dict[str, Tensor]`` (the CompVis ``log_images`` idea): image
    volumes (B, 1, D, H, W) in [-1, 1] and integer label maps (B, 1, D, H, W) under keys containing ``"label"``.
    One montage per volume stacks every returned entry as a row; one GIF per image entry scrolls through the slices.
    Files go to ``<out_dir>/<stage>_step<global_step>/``; montages are also sent to a TensorBoard logger if any.

    Args:
        out_dir: folder for the PNG/GIF files (inside the run's output folder).
        every_n_val_epochs: render on every n-th validation run.
        max_volumes: render at most this many volumes of the first validation batch.
        num_slices: axial slices per montage row.
        label_nc: number of classes, for the label colour map.
        class_names: the dataset's class names (``${dataset.class_names}``), drawn as the montage's colour legend.
    """

    def __init__(
        self,
        out_dir: str,
        every_n_val_epochs: int = 1,
        max_volumes: int = 2,
        num_slices: int = 6,
        label_nc: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if every_n_val_epochs < 1 or max_volumes < 1:
            raise ValueError("every_n_val_epochs and max_volumes must be >= 1")
        self.out_dir = Path(out_dir)
        self.every_n_val_epochs = every_n_val_epochs
        self.max_volumes = max_volumes
        self.num_slices = num_slices
        self.label_nc = label_nc
        self.class_names = list(class_names) if class_names else None
        self._val_runs = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_runs += 1

    # the count of validation runs is in the checkpoint: a resumed run keeps the every_n_val_epochs rhythm
    def state_dict(self) -> dict[str, int]:
        return {"val_runs": self._val_runs}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._val_runs = int(state_dict.get("val_runs", 0))

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (self._val_runs - 1) % self.every_n_val_epochs != 0 or not hasattr(pl_module, "log_volumes"):
            return
        from dataset.visualization import save_gif, save_montage

        with torch.no_grad():
            volumes = pl_module.log_volumes(batch)
        folder = self.out_dir / f"val_step{trainer.global_step:07d}"
        n = 1
        while folder.exists():  # a resumed run can validate at a step it already rendered: never overwrite
            folder = self.out_dir / f"val_step{trainer.global_step:07d}-{n}"
            n += 1
        folder.mkdir(parents=True)
        n = min(self.max_volumes, next(iter(volumes.values())).shape[0])
        for i in range(n):
            # label maps stay integer: that is how the montage tells them from images
            rows = [(name, vol[i].detach().cpu()) for name, vol in volumes.items()]
            labels = [v for name, v in rows if "label" in name]
            montage = folder / f"montage_{i}.png"
            affine = batch["affine"][i] if "affine" in batch else None  # montages reorient to RAS from it
            save_montage(montage, rows, num_slices=self.num_slices, label_nc=self.label_nc or None, affine=affine,
                         class_names=self.class_names)  # fmt: skip
            for name, vol in rows:
                if "label" not in name:
                    save_gif(folder / f"{name}_{i}.gif", vol, label=labels[0] if labels else None, affine=affine)
            self._to_tensorboard(trainer, montage, f"val/montage_{i}")
        log.info("wrote validation montages to %s", folder)

    @staticmethod
    def _to_tensorboard(trainer: pl.Trainer, png: Path, tag: str) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, pl.loggers.TensorBoardLogger):
                import numpy as np
                from PIL import Image

                img = np.asarray(Image.open(png).convert("RGB"))
                lg.experiment.add_image(tag, img, global_step=trainer.global_step, dataformats="HWC")


class StateDigest(pl.Callback):
    """Write a per-rank digest of the trained weights at the end of fit (``<out_dir>/state_digest_rank<R>.json``).

    Under DDP every rank must hold identical weights after each step; comparing these files is the cheapest proof
    (used by the two-process DDP tests, and handy when a multi-GPU run diverges).
    """

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import hashlib

        h = hashlib.sha256()
        total = 0.0
        for name, tensor in sorted(pl_module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            if t.is_floating_point():
                total += float(t.double().sum())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "sha256": h.hexdigest(),
            "sum": total,
        }
        atomic_write_json(self.out_dir / f"state_digest_rank{trainer.global_rank}.json", record)


def _numpy_state(gen: np.random.Generator | None = None) -> dict[str, Any]:
    """A numpy RNG state as checkpoint-safe plain data (tensors, ints, floats; ``weights_only=True`` loads it)."""
    if gen is not None:
        return {"bit_generator": gen.bit_generator.state}  # nested dict of str / int
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


def _owned_generators(pl_module: pl.LightningModule) -> dict[str, torch.Generator | np.random.Generator]:
    """Every ``torch.Generator`` / numpy ``Generator`` held as an attribute of the module or its submodules."""
    found: dict[str, torch.Generator | np.random.Generator] = {}
    for name, module in pl_module.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, (torch.Generator, np.random.Generator)):
                found[f"{name}.{attr}" if name else attr] = value
    return found


class ResumeRNGState(pl.Callback):
    """Save every RNG the training draws from in the checkpoint, and restore it on resume (exact resume).

    Saved: the global RNGs of torch (CPU and every CUDA device), numpy and Python, and every ``torch.Generator`` or
    numpy ``Generator`` the LightningModule or one of its submodules keeps as an attribute (codebook restarts,
    timestep or noise generators...). The states of a checkpoint are applied just before the first training batch
    after the resume, not when the checkpoint is loaded: whatever a resume does in between (building loaders,
    measuring statistics) then cannot shift them, and the next batch draws exactly what the uninterrupted run drew.
    Under DDP every rank's states are gathered into the one checkpoint (``per_rank``) and each rank resumes with
    its own. :func:`train.run.train` adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None
        self._module: pl.LightningModule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module

    def state_dict(self) -> dict[str, Any]:
        """This process's RNG states; under DDP every rank's, gathered (``per_rank``, indexed by global rank).

        Lightning builds a checkpoint's callback states on every rank before rank 0 writes it, so the gather runs
        on all ranks together.
        """
        state = self._own_state()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, state)
            return {**state, "per_rank": gathered}
        return state

    def _own_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "generators": {},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        for name, gen in _owned_generators(self._module).items() if self._module is not None else ():
            if isinstance(gen, torch.Generator):
                state["generators"][name] = {"torch": gen.get_state(), "device": str(gen.device)}
            else:
                state["generators"][name] = {"numpy": _numpy_state(gen)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank")
        if per_rank:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            if rank < len(per_rank):
                self._pending = per_rank[rank]  # this rank's own streams, not rank 0's
                return
            log.warning("checkpoint has RNG states of %d rank(s); rank %d resumes with rank 0's", len(per_rank), rank)
            self._pending = per_rank[0]
            return
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        _set_numpy_state(state["numpy"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        owned = _owned_generators(pl_module)
        for name, saved in state.get("generators", {}).items():
            gen = owned.get(name)
            if gen is None:
                log.warning("checkpoint has the state of generator %s, which the model no longer has", name)
            elif isinstance(gen, torch.Generator) and "torch" in saved:
                gen.set_state(saved["torch"])
            elif isinstance(gen, np.random.Generator) and "numpy" in saved:
                gen.bit_generator.state = saved["numpy"]["bit_generator"]
            else:
                log.warning("generator %s: checkpoint state of another kind, not restored", name)
