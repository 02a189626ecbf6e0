"""Known answers for the Fréchet distance and the streaming feature statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics.fid import get_fid_score

from evaluation.frechet import FeatureStats, _frechet_from_rows, fid_from_stats, frechet_distance, rank_warning


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)  # standard deviations
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # Tr(S1 + S2 - 2 sqrt(S1 S2)), diagonal case
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)


def test_proportional_full_covariances_match_closed_form():
    # S2 = c S1 with S1 non-diagonal: sqrt(S1 S2) = sqrt(c) S1, so FD = |dmu|^2 + (1 - sqrt(c))^2 Tr(S1).
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    s1 = a @ a.T + 0.5 * np.eye(5)
    c = 2.7
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - np.sqrt(c)) ** 2 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, c * s1) == pytest.approx(expected, rel=1e-9)


def test_identical_statistics_give_zero():
    feats = np.random.default_rng(2).normal(size=(40, 8))
    a, b = FeatureStats(8), FeatureStats(8)
    a.update(feats)
    b.update(feats[::-1].copy())  # order does not matter
    assert fid_from_stats(a, b) == (pytest.approx(0.0, abs=1e-9), "sqrtm")


def test_rank_deficient_identical_sets_give_zero_within_tolerance():
    # Fewer vectors than dimensions (the usual 3D-FID situation): sqrtm of a singular product.
    feats = np.random.default_rng(3).normal(size=(5, 32))
    a, b = FeatureStats(32), FeatureStats(32)
    a.update(feats)
    b.update(feats)
    value, method = fid_from_stats(a, b)
    assert method == "nuclear-norm"
    assert abs(value) < 1e-9 * np.trace(a.cov())


def test_streaming_statistics_match_numpy_and_monai():
    rng = np.random.default_rng(4)
    real = rng.normal(loc=50.0, size=(60, 6))  # large common offset: the shifted sums must not lose precision
    fake = rng.normal(loc=50.3, scale=1.2, size=(45, 6))
    stats_r, stats_f = FeatureStats(6), FeatureStats(6)
    for chunk in np.array_split(real, 7):
        stats_r.update(chunk)
    stats_f.update(torch.from_numpy(fake))
    np.testing.assert_allclose(stats_r.mean(), real.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats_r.cov(), np.cov(real, rowvar=False), rtol=1e-10, atol=1e-12)
    ours, method = fid_from_stats(stats_r, stats_f)
    assert method == "sqrtm"
    ref = float(get_fid_score(torch.from_numpy(fake), torch.from_numpy(real)))
    assert ours == pytest.approx(ref, rel=1e-8)
    assert ours > 0.1


@pytest.mark.parametrize(("n1", "n2", "dim"), [(30, 25, 8), (10, 12, 64)], ids=["full-rank", "rank-deficient"])
def test_nuclear_norm_path_equals_sqrtm_path(n1, n2, dim):
    rng = np.random.default_rng(5)
    x1 = rng.normal(size=(n1, dim)) @ rng.normal(size=(dim, dim))
    x2 = 0.5 + rng.normal(size=(n2, dim)) @ rng.normal(size=(dim, dim))
    via_sqrtm = frechet_distance(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert _frechet_from_rows(x1, x2) == pytest.approx(via_sqrtm, rel=1e-6)
    stats1, stats2 = FeatureStats(dim), FeatureStats(dim)
    stats1.update(x1)
    stats2.update(x2)
    assert fid_from_stats(stats1, stats2)[1] == ("sqrtm" if n1 > dim else "nuclear-norm")


def test_kept_rows_and_errors():
    stats = FeatureStats(3)
    with pytest.raises(ValueError, match="no features"):
        stats.mean()
    stats.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.cov()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        stats.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 3), np.nan))
    stats.update(np.zeros((2, 3)))
    assert stats.rows().shape == (3, 3)
    stats.update(np.zeros((1, 3)))  # more vectors than dimensions: rows are dropped (sqrtm path)
    assert stats.rows() is None and stats.n == 4
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_rank_warning():
    assert rank_warning("fid3d", 3000, 2500, 2048) is None
    text = rank_warning("fid3d", 100, 120, 2048)
    assert "100 feature vectors < feature dimension 2048" in text
