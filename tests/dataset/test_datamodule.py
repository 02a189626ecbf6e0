"""VolumeDataModule: batches conform, seeded shuffling, ordered val/test, early checks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.utils.data import Dataset

from dataset.contract import DataError, validate_sample
from dataset.datamodule import VolumeDataModule
from dataset.synthetic import SyntheticPhantomDataset


def _dm(**kw) -> VolumeDataModule:
    args = dict(
        dataset=partial(SyntheticPhantomDataset, num_samples=6, label_nc=4), batch_size=2, num_workers=0, label_nc=4
    )
    args.update(kw)
    return VolumeDataModule(**args)


def _ids(loader) -> list[str]:
    return [sid for batch in loader for sid in batch["id"]]


def test_batches_conform() -> None:
    dm = _dm(val_batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["label"].shape == (2, 1, 16, 16, 16)
    assert batch["label"].dtype == torch.int64 and batch["affine"].shape == (2, 4, 4)
    for i in range(2):
        validate_sample({k: v[i] for k, v in batch.items()}, 4)
    assert next(iter(dm.val_dataloader()))["image"].shape[0] == 3


def test_shuffle_is_seeded_and_val_test_are_ordered() -> None:
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    first = _ids(a.train_dataloader())
    assert first == _ids(b.train_dataloader())
    assert sorted(first) == sorted(_ids(c.train_dataloader())) and first != _ids(c.train_dataloader())
    assert _ids(a.val_dataloader()) == [f"phantom_val_{i:04d}" for i in range(6)]
    assert _ids(a.test_dataloader()) == _ids(a.predict_dataloader())


def test_workers_are_persistent() -> None:
    loader = _dm(num_workers=1).train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert not _dm().train_dataloader().persistent_workers


def test_label_nc_mismatch_is_caught_before_training() -> None:
    with pytest.raises(ValueError, match="label_nc=4 but the datamodule 5"):
        _dm(label_nc=5).setup("fit")


class _Empty(Dataset):
    label_nc = 4

    def __init__(self, split: str) -> None:
        self.split = split

    def __len__(self) -> int:
        return 0


def test_empty_split_is_an_error() -> None:
    with pytest.raises(DataError, match="split 'val' is empty"):
        _dm(dataset=_Empty).setup("validate")


@pytest.mark.parametrize(
    "kw",
    [{"batch_size": 0}, {"val_batch_size": 0}, {"num_workers": -1}, {"label_nc": 1}, {"dataset": 3}],
    ids=["batch", "val-batch", "workers", "label_nc", "dataset"],
)
def test_invalid_arguments(kw: dict) -> None:
    with pytest.raises(ValueError):
        _dm(**kw)
