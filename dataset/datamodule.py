"""One LightningDataModule for every dataset: the dataset class is a factory taking the split name."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.contract import DataError, validate_sample
from dataset.splits import check_split

log = logging.getLogger(__name__)


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

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            # A dedicated generator makes the shuffle order a function of `seed` alone.
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training batches: image (B, 1, D, H, W), label (B, 1, D, H, W), affine (B, 4, 4)."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order."""
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in dataset order."""
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (label maps for generation)."""
        return self._loader("test", self.val_batch_size, shuffle=False)
