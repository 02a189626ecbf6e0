"""Windows, blend weights and padding used by block-wise generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.nifti import voxel_size_dhw
from diffusion.generation.geometry import pad_label, padded_shape
from diffusion.sampling import blend_weight, window_starts, windows


@pytest.mark.parametrize(
    ("size", "window", "overlap"), [(8, 8, 0.5), (20, 8, 0.5), (21, 8, 0.25), (5, 8, 0.5), (64, 16, 0.0)]
)
def test_windows_cover_every_index_and_stay_inside(size: int, window: int, overlap: float) -> None:
    starts = window_starts(size, window, overlap)
    w = min(window, size)
    covered = np.zeros(size, dtype=int)
    for s in starts:
        assert 0 <= s and s + w <= size
        covered[s : s + w] += 1
    assert covered.min() >= 1
    if len(starts) > 1:
        steps = np.diff(starts)
        assert steps.max() <= int(w * (1 - overlap)) or overlap == 0.0


def test_window_argument_checks() -> None:
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, 1.0)
    with pytest.raises(ValueError, match=">= 1"):
        window_starts(0, 4, 0.5)


def test_windows_3d_count() -> None:
    wins = windows((16, 40, 40), (8, 16, 16), 0.5)
    assert len(wins) == len(window_starts(16, 8, 0.5)) * len(window_starts(40, 16, 0.5)) ** 2
    assert all(sl.stop - sl.start == 8 for sl, _, _ in wins)


def test_blend_weight_positive_peaked_and_symmetric() -> None:
    w = blend_weight((8, 16, 16))
    assert w.shape == (8, 16, 16)
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(2))
    assert float(w[4, 8, 8]) == 1.0 and float(w[0, 0, 0]) < float(w[1, 1, 1])


def test_voxel_size_of_an_oblique_affine() -> None:
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0])  # I, J, K voxel sizes
    assert voxel_size_dhw(affine) == pytest.approx((3.0, 0.8, 1.2))


def test_padding_to_multiples_and_crop_back() -> None:
    label = torch.randint(0, 3, (23, 41, 37))
    shape = padded_shape(tuple(label.shape), (4, 32, 32), (32, 32, 32))
    assert shape == (32, 64, 64)
    padded, crop = pad_label(label, shape)
    assert padded.shape == shape
    assert torch.equal(padded[crop], label)
    # replicated edges, not background
    assert torch.equal(padded[crop[0].start - 1, crop[1], crop[2]], label[0])
