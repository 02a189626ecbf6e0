"""Procedural phantoms: contract, determinism, disjoint splits, nesting, texture."""

from __future__ import annotations

import pytest
import torch

from dataset.contract import validate_sample
from dataset.synthetic import SyntheticPhantomDataset


def test_samples_conform_and_hold_every_class() -> None:
    ds = SyntheticPhantomDataset("train", num_samples=4, size=(16, 16, 16), label_nc=4, seed=0)
    for i in range(len(ds)):
        sample = ds[i]
        validate_sample(sample, 4)
        assert sample["image"].shape == (1, 16, 16, 16)
        assert torch.unique(sample["label"]).tolist() == [0, 1, 2, 3]
    assert torch.allclose(
        torch.linalg.norm(sample["affine"][:3, :3], dim=0), torch.tensor([1.5, 1.5, 2.0], dtype=torch.float64)
    )


def test_deterministic_and_splits_disjoint() -> None:
    a = SyntheticPhantomDataset("train", num_samples=3, seed=5)
    b = SyntheticPhantomDataset("train", num_samples=3, seed=5)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))
    val = SyntheticPhantomDataset("val", num_samples=3, seed=5)
    assert all(not torch.equal(a[i]["image"], val[j]["image"]) for i in range(3) for j in range(3))
    assert not torch.equal(a[0]["label"], SyntheticPhantomDataset("train", num_samples=1, seed=6)[0]["label"])


def test_classes_nest_and_have_distinct_intensity() -> None:
    sample = SyntheticPhantomDataset("test", num_samples=1, size=(24, 20, 16), label_nc=5, seed=1)[0]
    label, image = sample["label"][0], sample["image"][0]
    assert label.shape == (24, 20, 16)
    means = [float(image[label == k].mean()) for k in range(5)]
    assert means == sorted(means)  # brighter inwards, background darkest
    # Nesting: each class lies inside the previous one (bounding boxes nest, volumes shrink).
    boxes = []
    for k in range(1, 5):
        idx = (label >= k).nonzero()
        boxes.append((idx.min(0).values, idx.max(0).values, len(idx)))
    for (lo_out, hi_out, n_out), (lo_in, hi_in, n_in) in zip(boxes, boxes[1:]):
        assert (lo_in >= lo_out).all() and (hi_in <= hi_out).all() and n_in < n_out


@pytest.mark.parametrize(
    "kw",
    [{"num_samples": 0}, {"size": (16, 16)}, {"label_nc": 1}, {"split": "training"}, {"voxel_size": (1, 0, 1)}],
    ids=["samples", "size", "label_nc", "split", "voxel"],
)
def test_invalid_arguments(kw: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticPhantomDataset(**kw)
