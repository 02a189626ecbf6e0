"""One LightningDataModule for every dataset: the dataset class is a factory taking the split name.

The training order is resumable (SPEC section 10, exact resume): epoch ``e`` visits the samples in the order
``randperm(n, seed + e)``, whatever happened before, and the checkpoint records how many batches of the current
epoch were trained, so a resumed run continues with the next batch of the same order instead of replaying epoch 0.
"""

from __future__ import annotations

import logging
import math
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
    """Seeded shuffle as one stream of batches: batch ``p`` of the run is batch ``p % N`` of epoch ``p // N``.

    Epoch ``e`` is ``randperm(n, seed + e)`` (padded and split across ranks under DDP, as ``DistributedSampler``,
    so Lightning keeps it instead of replacing it); ``N`` is the number of batches an epoch trains (the loader
    length, or ``limit_train_batches``). The sampler counts the batches its loader has delivered
    (:meth:`advance`, called by :class:`ResumableLoader`), and every new pass continues the stream at that count.
    So the order does not depend on how Lightning cuts the stream into iterators: after a resume it builds
    iterators it drops unused or uses for one batch only (a run stopped at an epoch end finishes that epoch with
    one batch), and loader workers prefetch indices as soon as an iterator exists. Lightning's ``set_epoch`` is
    ignored for the same reason.

    Args:
        dataset: the sized dataset to sample from.
        seed: base seed of the order.
        batch_size: batch size per rank.
        num_replicas: DDP world size (1 without DDP).
        rank: this process's rank.
        start: batches of the stream already trained (a resumed run).
        batches_per_epoch: returns ``N`` when known (the Trainer's ``num_training_batches``), else ``None`` for
            the whole epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        start: int = 0,
        batches_per_epoch: Callable[[], int | float | None] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if start < 0 or batch_size < 1:
            raise ValueError(f"start must be >= 0 and batch_size >= 1, got {start}, {batch_size}")
        self.batch_size = batch_size
        self.position = start
        self._batches_per_epoch = batches_per_epoch

    def per_epoch(self) -> int:
        """``N``: batches of each epoch the stream uses."""
        full = math.ceil(self.num_samples / self.batch_size)
        limit = self._batches_per_epoch() if self._batches_per_epoch is not None else None
        return min(full, int(limit)) if isinstance(limit, (int, float)) and 1 <= limit < math.inf else full

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch follows from the number of batches delivered (see the class docstring)."""

    def __iter__(self) -> Iterator[int]:
        n = self.per_epoch()
        self.epoch, batch = divmod(self.position, n)
        indices = list(super().__iter__())
        return iter(indices[batch * self.batch_size : n * self.batch_size])

    def advance(self) -> None:
        """One more batch of the stream was delivered to training."""
        self.position += 1


class ResumableLoader(DataLoader):
    """A ``DataLoader`` (same arguments) that tells its :class:`ResumableSampler` about every delivered batch."""

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        for batch in super().__iter__():
            if isinstance(sampler, ResumableSampler):
                sampler.advance()
            yield batch

    # Lightning's "stateful loader" interface: it marks the loader as resumable mid-epoch (no "not resumable"
    # warning). The position itself is restored through VolumeDataModule.load_state_dict, before the loader exists.
    def state_dict(self) -> dict[str, Any]:
        """Nothing of its own: the stream position is in the datamodule's state."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here (see :meth:`state_dict`)."""


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
        self._resume_batches = 0  # training batches of the run before this process started (from a checkpoint)

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

        Each call returns a fresh loader that continues the run's batch stream where the checkpoint the run
        resumed from stopped (:class:`ResumableSampler`).
        """
        world, rank = self._world()
        sampler = ResumableSampler(
            self.dataset("train"), self.seed, self.batch_size, world, rank, start=self._resume_batches,
            batches_per_epoch=self._trainer_batches_per_epoch,
        )  # fmt: skip
        return self._loader("train", self.batch_size, sampler)

    def _trainer_batches_per_epoch(self) -> int | float | None:
        trainer = self.trainer
        return trainer.num_training_batches if trainer is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Where the training stream stands: ``{"batches": p}``, the next batch is batch p of the stream.

        Counted by the fit loop (batches trained, not what loader workers prefetched), so it is exact at any
        checkpoint, mid-epoch too.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {"batches": self._resume_batches}
        return {"batches": int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream of a checkpoint (called by Lightning before the loaders are built)."""
        batches = state_dict.get("batches", 0)
        if not isinstance(batches, int) or batches < 0:
            raise ValueError(f"bad data position in the checkpoint: {batches!r}")
        self._resume_batches = batches

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order."""
        return self._loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches in dataset order."""
        return self._loader("test", self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (label maps for generation)."""
        return self._loader("test", self.val_batch_size)
