"""evaluation.seams: the seam ratio of a volume generated window by window, on volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.seams import seam_ratio, window_borders


def test_window_borders_are_the_inner_starts_and_stops() -> None:
    # windows 0-32, 16-48, 32-64 along D of a 64-plane volume; one window spanning H and W
    pairs = [[(0, 32), (16, 48), (32, 64)], [(0, 8)], [(0, 8)]]
    assert window_borders(pairs, (64, 8, 8)) == [[16, 32, 48], [], []]


def test_seam_ratio_known_answers() -> None:
    ramp = np.broadcast_to(np.arange(64.0)[:, None, None], (64, 4, 4))  # equal steps everywhere: no seam
    assert seam_ratio(ramp, [[16, 32, 48], [], []]) == pytest.approx(1.0)
    stepped = ramp + 3.0 * (np.arange(64) >= 32)[:, None, None]  # a jump of 3 on top of the unit step at 31 | 32
    # across the borders: steps 1, 4, 1 -> mean of squares 6; every other plane of axis 0: 1
    assert seam_ratio(stepped, [[16, 32, 48], [], []]) == pytest.approx(6.0)
    assert seam_ratio(stepped, [[], [], []]) is None  # no border: no ratio
    assert seam_ratio(np.zeros((8, 8, 8)), [[4], [], []]) is None  # constant: no step anywhere
