"""Known-answer tests of the anatomical-coherence measures (evaluation/coherence.py)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.coherence import CoherenceRules, breaks, containment_rules, measure, profile_runs, summary

NAMES = ["background", "outer", "inner"]


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """Boolean (D, H, W) ball."""
    grid = np.indices(shape).astype(np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def anatomy(shape=(16, 16, 16), centre=(7.5, 7.5, 7.5), r_out=6.0, r_in=3.0) -> np.ndarray:
    """Class 1 shell around a class 2 core: one body, core always inside the shell."""
    label = np.zeros(shape, dtype=np.int64)
    label[ball(shape, centre, r_out)] = 1
    label[ball(shape, centre, r_in)] = 2
    return label


def test_profile_runs_counts_separate_runs_above_half_max() -> None:
    assert profile_runs(np.array([0, 1, 5, 10, 6, 1, 0])) == 1
    assert profile_runs(np.array([10, 9, 0, 0, 8, 10])) == 2  # wrapped: full at both ends, empty between
    assert profile_runs(np.array([10, 2, 10, 2, 10])) == 3
    assert profile_runs(np.zeros(5)) == 0


def test_measure_of_one_centred_anatomy() -> None:
    c = measure(anatomy(), 3)
    assert (c.components, c.large_bodies, c.largest_share, c.runs) == (1, 1, 1.0, (1, 1, 1))
    np.testing.assert_allclose(c.centroid, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(c.class_centroids, [[0.5, 0.5, 0.5]] * 2)
    assert c.inside[1, 0] == 1.0  # inner (class 2) wholly inside the filled outer shell (class 1)
    assert c.inside[0, 1] < 0.5  # the shell is not inside the core


def test_two_half_anatomies_stacked_along_depth() -> None:
    """Two bodies at the two ends of the depth axis: two large bodies, two runs along D, shares 1/2."""
    label = np.zeros((24, 16, 16), dtype=np.int64)
    label[:5] = anatomy((24, 16, 16), (0.0, 7.5, 7.5), 6.0, 3.0)[:5]
    label[19:] = anatomy((24, 16, 16), (23.0, 7.5, 7.5), 6.0, 3.0)[19:]
    c = measure(label, 3)
    assert c.large_bodies == 2 and c.runs[0] == 2 and c.runs[1:] == (1, 1)
    assert c.largest_share == pytest.approx(0.5)
    np.testing.assert_allclose(c.centroid, [0.5, 0.5, 0.5])  # the centroid alone would not see it


def test_specks_are_components_but_not_bodies() -> None:
    label = anatomy()
    label[0, 0, 0] = 1
    c = measure(label, 3)
    assert c.components == 2 and c.large_bodies == 1 and c.largest_share > 0.99


def test_breaks_flags_stacked_split_and_displaced_maps_only() -> None:
    real = [measure(anatomy(centre=(7.5 + d, 7.5, 7.5 - d)), 3) for d in (-1, 0, 1)]
    assert containment_rules(real) == [(2, 1)]
    assert breaks(measure(anatomy(centre=(8.0, 7.0, 7.5)), 3), real, NAMES) == []  # within the real range

    stacked = np.zeros((16, 16, 16), dtype=np.int64)
    stacked[:4] = anatomy(centre=(0.0, 7.5, 7.5))[:4]
    stacked[12:] = anatomy(centre=(15.0, 7.5, 7.5))[12:]
    reasons = breaks(measure(stacked, 3), real, NAMES)
    assert any("large bodies" in r for r in reasons) and any("area runs along D" in r for r in reasons)

    displaced = anatomy(centre=(3.0, 7.5, 7.5), r_out=3.0, r_in=1.5)
    assert any(
        "foreground centroid outside the real range along D" in r for r in breaks(measure(displaced, 3), real, NAMES)
    )

    escaped = anatomy()
    escaped[escaped == 2] = 0
    escaped[0:3, 0:3, 0:3] = 2  # the core outside the shell
    assert any("inner only 0.00 inside outer" in r for r in breaks(measure(escaped, 3), real, NAMES))


def test_summary_shares_and_leave_one_out() -> None:
    real = [(f"r{d}", anatomy(centre=(7.5 + d, 7.5, 7.5))) for d in (-1, 0, 1)]
    split = np.zeros((16, 16, 16), dtype=np.int64)
    split[:, :, :7] = anatomy()[:, :, :7]
    split[:, :, 9:] = anatomy()[:, :, 9:]  # cut in two along W
    fake = [("good", anatomy(centre=(8.0, 7.5, 7.5))), ("split", split)]
    report = summary(fake, real, NAMES)
    assert report["incoherent"] == ["split"] and report["incoherent_share"] == 0.5
    assert report["containment_rules"] == ["inner inside outer"]
    assert report["real_leave_one_out_share"] is not None and report["per_map"]["good"] == []


def test_rules_thresholds_are_used() -> None:
    real = [measure(anatomy(), 3)]
    label = anatomy()
    label[0:2, 0:2, 0:2] = 1  # a small second body: 8 voxels
    fake = measure(label, 3, CoherenceRules(large_body=0.001))
    assert fake.large_bodies == 2
    assert breaks(fake, real, NAMES, CoherenceRules(large_body=0.001))
    assert not breaks(measure(label, 3), real, NAMES)  # at the default threshold it is a speck
