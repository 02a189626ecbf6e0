"""One LightningDataModule for every dataset: the dataset class is a factory taking the split name.

The training order is resumable (SPEC section 10, exact resume): epoch ``e`` visits the samples in the order
``randperm(n, seed + e)``, whatever happened before, and the checkpoint records how many batches of the current
epoch were trained, so a resumed run continues with the next batch of the same order instead of replaying epoch 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dataset.contract import DataError, validate_sample
from dataset.splits import check_split

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """Seeded shuffle: epoch ``e`` is ``randperm(n, seed + e)`` (padded and split across ranks under DDP).

    It is a ``DistributedSampler``, so Lightning keeps it under DDP instead of replacing it. The epoch is counted by
    the sampler itself: Lightning's ``set_epoch`` value is not reliable after a resume (a run stopped by
    ``max_steps`` in the middle of an epoch is restored with that epoch already counted as processed), so it is
    ignored. The first pass starts ``skip`` indices into ``start_epoch`` (a resumed run); a pass is used up only
    when its loader delivers a batch (:meth:`commit`, called by :class:`ResumableLoader`): loader workers prefetch
    indices as soon as an iterator is built, and Lightning sometimes builds one it drops unused after a resume,
    which must not cost an epoch.

    Args:
        dataset: the sized dataset to sample from.
        seed: base seed of the order.
        num_replicas: DDP world size (1 without DDP).
        rank: this process's rank.
        start_epoch: epoch of the first pass.
        skip: indices of ``start_epoch`` already trained on (a multiple of the per-rank batch size).
    """

    def __init__(
        self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0, start_epoch: int = 0, skip: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if start_epoch < 0 or skip < 0:
            raise ValueError(f"start_epoch and skip must be >= 0, got {start_epoch}, {skip}")
        self.epoch = start_epoch
        self._skip = skip
        self._pass_epoch = start_epoch  # epoch of the pass handed out last

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler counts its own epochs (see the class docstring)."""

    def __iter__(self) -> Iterator[int]:
        self._pass_epoch = self.epoch
        return iter(list(super().__iter__())[self._skip :])

    def commit(self) -> None:
        """The last pass handed out is in use: the next pass is the next whole epoch."""
        self.epoch = self._pass_epoch + 1
        self._skip = 0


class ResumableLoader(DataLoader):
    """A ``DataLoader`` (same arguments) that tells its :class:`ResumableSampler` when a pass really started."""

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        for i, batch in enumerate(super().__iter__()):
            if i == 0 and isinstance(sampler, ResumableSampler):
                sampler.commit()
            yield batch


class VolumeDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a split-aware dataset.

    Hydra builds it from a dataset yaml's ``datamodule`` node, where ``dataset`` is a ``_partial_: true``
    node so that ``dataset("train")`` constructs the training split.

    Args:
        dataset: factory ``split -> Dataset`` yielding contract samples (``dataset.contract``).
        batch_size: training batch size.
        num_workers: loader worker processes (0 = load in the main process).
        label_nc: number of classes; checked against the dataset's ``label_nc`` and its first sample before
            any training starts.
        val_batch_size: batch size of val/test loaders (default ``batch_size``).
        pin_memory: pin host memory (useful with CUDA).
        seed: seed of the training shuffle order.
    """

    def __init__(
        self,
        dataset: Callable[[str], Dataset],
        batch_size: int,
        num_workers: int,
        label_nc: int,
        val_batch_size: int | None = None,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not callable(dataset):
            raise ValueError(f"dataset must be a callable split -> Dataset, got {type(dataset).__name__}")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if label_nc < 2:
            raise ValueError(f"label_nc must be >= 2, got {label_nc}")
        self.save_hyperparameters(ignore=["dataset"])
        self.dataset_factory = dataset
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.label_nc = label_nc
        self.pin_memory = pin_memory
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}
        self._resume_position: tuple[int, int] = (0, 0)  # (epoch, batches of it trained), from a checkpoint

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use and checked (non-empty, label_nc, first sample)."""
        check_split(split)
        if split not in self.datasets:
            ds = self.dataset_factory(split)
            if len(ds) == 0:  # type: ignore[arg-type]
                raise DataError(f"{type(ds).__name__}: split {split!r} is empty")
            ds_nc = getattr(ds, "label_nc", None)
            if ds_nc is not None and int(ds_nc) != self.label_nc:
                raise ValueError(f"{type(ds).__name__} has label_nc={ds_nc} but the datamodule {self.label_nc}")
            validate_sample(ds[0], self.label_nc)
            log.info("%s split %s: %d samples", type(ds).__name__, split, len(ds))  # type: ignore[arg-type]
            self.datasets[split] = ds
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a Lightning stage needs (fit: train + val; validate: val; test/predict: test)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            self.dataset(split)

    def _loader(self, split: str, batch_size: int, sampler: ResumableSampler | None = None) -> DataLoader:
        return ResumableLoader(
            self.dataset(split),
            batch_size=batch_size,
            sampler=sampler,
            # Its own generator: building a loader iterator draws the worker base seed from it, never from the
            # global RNG, so the number of loaders a run builds (a resume builds more) cannot shift the training RNG.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training batches: image (B, 1, D, H, W), label (B, 1, D, H, W), affine (B, 4, 4).

        Each call returns a fresh loader that starts where the checkpoint the run resumed from stopped.
        """
        world, rank = self._world()
        epoch, batches = self._resume_position
        ds = self.dataset("train")
        sampler = ResumableSampler(ds, self.seed, world, rank, start_epoch=epoch, skip=batches * self.batch_size)
        return self._loader("train", self.batch_size, sampler)

    def state_dict(self) -> dict[str, Any]:
        """Where the training order stands: ``{"epoch": e, "batch": b}`` = the next batch is batch b of epoch e.

        Counted from the batches the fit loop has trained (not from what loader workers prefetched), so it is exact
        at any checkpoint, mid-epoch too.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {"epoch": self._resume_position[0], "batch": self._resume_position[1]}
        trained = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or per_epoch < 1:  # infinite or empty loader: nothing to resume
            return {"epoch": 0, "batch": 0}
        return {"epoch": trained // per_epoch, "batch": trained % per_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training order of a checkpoint (called by Lightning before the loaders are built)."""
        epoch, batch = int(state_dict.get("epoch", 0)), int(state_dict.get("batch", 0))
        if epoch < 0 or batch < 0:
            raise ValueError(f"bad data position in the checkpoint: epoch {epoch}, batch {batch}")
        self._resume_position = (epoch, batch)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order."""
        return self._loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches in dataset order."""
        return self._loader("test", self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (label maps for generation)."""
        return self._loader("test", self.val_batch_size)
