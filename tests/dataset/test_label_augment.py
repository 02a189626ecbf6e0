"""Label-map augmentation of the label stages: known-answer warps, the table kept, seeded, millimetre units."""

from __future__ import annotations

import pytest
import torch

from dataset.label_augment import LabelAugment, augment_labels, augment_training_maps, step_generator, warp_labels
from tests.vq_gan_3d.helpers import label_phantoms

IDENTITY = torch.eye(3, dtype=torch.float64)[None]
NO_SHIFT = torch.zeros(1, 3, dtype=torch.float64)


def block() -> torch.Tensor:
    """A (1, 1, 8, 8, 8) map: class 2 in a 4^3 cube with a class-3 voxel in it, background around."""
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[0, 0, 2:6, 2:6, 2:6] = 2
    label[0, 0, 3, 3, 3] = 3
    return label


def test_warp_known_answers() -> None:
    label = block()
    assert torch.equal(warp_labels(label, IDENTITY, NO_SHIFT), label)
    # reading one voxel further along D (grid step 2 / (8 - 1)) moves the map one voxel down; the last slice is
    # read from outside the block: background
    shift = torch.tensor([[2 / 7, 0.0, 0.0]], dtype=torch.float64)
    moved = warp_labels(label, IDENTITY, shift)
    assert torch.equal(moved[:, :, :7], label[:, :, 1:]) and not moved[:, :, 7].any()
    # a constant displacement field is a translation too (along W here: grid_sample's x axis)
    field = torch.zeros(1, 3, 2, 2, 2, dtype=torch.float64)
    field[:, 2] = -2 / 7
    assert torch.equal(warp_labels(label, IDENTITY, NO_SHIFT, field)[..., 1:], label[..., :7])
    # a half-turn about D maps (h, w) to (7 - h, 7 - w)
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))[None]
    assert torch.equal(warp_labels(label, half_turn, NO_SHIFT), label.flip(3, 4))


def test_augmentation_keeps_the_table_changes_maps_and_is_seeded() -> None:
    batch = label_phantoms(4)
    label = batch["label"]
    config = LabelAugment(p=1.0, degrees=10.0, scales=0.1, translation_mm=3.0, elastic_max_displacement_mm=3.0)
    out = augment_training_maps(batch, config, step=5)
    assert out.shape == label.shape and out.dtype == label.dtype
    assert set(out.unique().tolist()) <= set(label.unique().tolist())  # nearest neighbour: no new or mixed values
    for i in range(4):
        changed = (out[i] != label[i]).float().mean()
        assert 0.01 < changed < 0.5  # every map deformed, none destroyed
        assert torch.equal(out[i].unique(), label[i].unique())  # a small deformation keeps every class
    assert torch.equal(augment_training_maps(batch, config, step=5), out)  # same seed and step: same maps
    assert not torch.equal(augment_training_maps(batch, config, step=6), out)  # a new step: new draws
    reseeded = LabelAugment(**{**config.as_dict(), "seed": 1})
    assert not torch.equal(augment_training_maps(batch, reseeded, step=5), out)
    assert not torch.equal(augment_training_maps(batch, config, step=5, rank=1), out)  # DDP ranks differ
    assert torch.equal(augment_training_maps(batch, None, step=5), label)  # off: the maps as they are
    assert torch.equal(augment_training_maps(batch, LabelAugment(p=0.0), step=5), label)


def test_ranges_are_millimetres() -> None:
    """The same translation range moves a map of 1 mm voxels further (in voxels) than one of 4 mm voxels."""
    label = block().expand(16, -1, -1, -1, -1)
    config = LabelAugment(p=1.0, degrees=0.0, scales=0.0, translation_mm=4.0, elastic_max_displacement_mm=0.0)

    def moved(voxel_mm: float) -> float:
        affine = torch.diag(torch.tensor([voxel_mm] * 3 + [1.0], dtype=torch.float64)).expand(16, -1, -1)
        out = augment_labels(label, affine, config, step_generator(0, 0, 0, torch.device("cpu")))
        return float((out != label).float().mean())

    assert moved(4.0) < 0.5 * moved(1.0)
    assert moved(8.0) == 0.0  # at most half a voxel: nearest neighbour reads the same voxel


def test_config_is_checked() -> None:
    assert LabelAugment.from_config(None) is None
    assert LabelAugment.from_config({"p": 0.5, "seed": 3}) == LabelAugment(p=0.5, seed=3)
    with pytest.raises(ValueError, match="unknown label_augment keys"):
        LabelAugment.from_config({"degree": 5.0})
    with pytest.raises(ValueError, match="p must be"):
        LabelAugment(p=1.5)
    with pytest.raises(ValueError, match="control_points"):
        LabelAugment(elastic_control_points=1)
