"""Block starts (grid and seeded random) and block extraction with padding."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.crops import axis_starts, block_starts, center_crop_or_pad_start, extract_block


@pytest.mark.parametrize(
    ("size", "block", "expected"),
    [(32, 32, [0]), (40, 32, [0, 8]), (100, 32, [0, 23, 45, 68]), (20, 32, [-6]), (21, 32, [-5])],
    ids=["exact", "overlap", "four", "pad", "pad-odd"],
)
def test_grid_axis_starts(size: int, block: int, expected: list[int]) -> None:
    starts = axis_starts(size, block)
    assert starts == expected
    covered = np.zeros(size, bool)
    for s in starts:
        covered[max(s, 0) : s + block] = True
    assert covered.all()  # the grid covers every voxel


def test_random_sampler_is_seeded_and_in_range() -> None:
    a = block_starts((50, 40, 30), (8, 16, 16), "random", 6, np.random.default_rng(3))
    b = block_starts((50, 40, 30), (8, 16, 16), "random", 6, np.random.default_rng(3))
    assert a == b and len(a) == 6
    assert all(0 <= d <= 42 and 0 <= h <= 24 and 0 <= w <= 14 for d, h, w in a)
    with pytest.raises(ValueError):
        block_starts((50, 40, 30), (8, 16, 16), "random", None, None)
    with pytest.raises(ValueError):
        block_starts((50, 40, 30), (8, 16, 16), "sliding")


def test_extract_block_pads_outside() -> None:
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = extract_block(vol, (-1, 1, 2), (4, 2, 3), -1.0)
    assert out.shape == (4, 2, 3)
    assert (out[0] == -1).all() and (out[3] == -1).all() and (out[:, :, 2] == -1).all()
    np.testing.assert_array_equal(out[1:3, :, :2], vol[:, 1:3, 2:4])
    assert center_crop_or_pad_start((10, 5, 8), (6, 8, 8)) == (2, -1, 0)
