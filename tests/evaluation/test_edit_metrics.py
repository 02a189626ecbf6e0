"""Known answers of the edit metrics (evaluation/edit_metrics.py) and the boundary seam ratio."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.edit_metrics import (
    METHODS,
    method_names,
    parse_checkpoints,
    preservation,
    region_dice,
    region_fidelity,
    smoothed_fill,
    sphere_mask,
)
from evaluation.seams import boundary_seam_ratio


def ball(shape: tuple[int, int, int] = (16, 16, 16), r: float = 4.0) -> np.ndarray:
    return sphere_mask(shape, np.array([8, 8, 8]), r, np.eye(4))


def test_preservation_is_zero_outside_when_only_the_region_changed() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8))
    region = np.zeros_like(x, dtype=bool)
    region[2:5, 2:5, 2:5] = True
    band = np.zeros_like(region)
    band[2] = region[2]
    y = x.copy()
    y[region] += 0.5
    y[band] = x[band] + 0.25
    p = preservation(x, y, region, band)
    assert p["max_abs_outside"] == 0.0 and p["max_abs_band"] == pytest.approx(0.25)
    y[0, 0, 0] += 1.0
    assert preservation(x, y, region, band)["max_abs_outside"] == 1.0


def test_region_fidelity_known_answers() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(-1, 1, size=(16, 16, 16)).astype(np.float32)
    mask = ball()
    same = region_fidelity(truth, truth, mask, (-1, 1))
    assert same["mse"] == 0.0 and same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    pred = truth.copy()
    pred[mask] += 0.2  # 0.1 on the [0, 1] scale, where nothing clips
    pred = np.clip(pred, -1, 1)
    inside = np.abs(truth[mask]) < 0.8
    pred2 = truth.copy()
    pred2[mask] = np.where(inside, truth[mask] + 0.2, truth[mask])
    f = region_fidelity(pred2, truth, mask, (-1, 1))
    assert f["mse"] == pytest.approx(0.01 * inside.mean(), rel=1e-6)
    assert f["psnr"] == pytest.approx(10 * np.log10(1 / f["mse"]))
    assert f["ssim"] < 1.0
    # outside the mask nothing counts
    pred3 = truth.copy()
    pred3[~mask] = 0.0
    assert region_fidelity(pred3, truth, mask, (-1, 1))["mse"] == 0.0
    with pytest.raises(ValueError):
        region_fidelity(truth, truth, np.zeros_like(mask), (-1, 1))


def test_smoothed_fill_recovers_a_linear_ramp_and_a_constant_and_keeps_the_known_voxels() -> None:
    d = np.arange(16, dtype=np.float32)
    ramp = np.broadcast_to(d[:, None, None], (16, 16, 16)).copy()
    mask = ball(r=3.0)
    out = smoothed_fill(ramp, ~mask)
    assert np.array_equal(out[~mask], ramp[~mask])
    np.testing.assert_allclose(out[mask], ramp[mask], atol=1e-3)  # the harmonic fill of a ramp is the ramp
    const = np.full((8, 8, 8), 3.0, dtype=np.float32)
    hole = np.zeros_like(const, dtype=bool)
    hole[2:6, 2:6, 2:6] = True
    np.testing.assert_allclose(smoothed_fill(const, ~hole), 3.0, rtol=1e-6)
    # anisotropic voxels: a ramp in mm is still recovered
    ramp_mm = np.broadcast_to((d * 2.5)[:, None, None] + np.arange(16)[None, None, :] * 0.7, (16, 16, 16)).copy()
    out = smoothed_fill(ramp_mm, ~mask, (2.5, 1.0, 0.7))
    np.testing.assert_allclose(out[mask], ramp_mm[mask], atol=1e-3)


def test_region_dice() -> None:
    a = np.zeros((4, 4, 4), dtype=np.int64)
    a[:2] = 1
    b = a.copy()
    b[1] = 2
    mask = np.ones_like(a, dtype=bool)
    d = region_dice(b, a, mask, [1, 2, 3])
    assert d["1"] == pytest.approx(2 * 16 / (16 + 32)) and d["2"] == 0.0 and np.isnan(d["3"])


def test_boundary_seam_ratio_is_one_without_a_seam_and_grows_with_a_step() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(16, 16, 16))
    mask = ball()
    r0 = boundary_seam_ratio(noise, mask)
    assert 0.8 < r0 < 1.2  # white noise: a step across the boundary is like any other
    stepped = noise.copy()
    stepped[mask] += 3.0
    assert boundary_seam_ratio(stepped, mask) > 3.0
    assert boundary_seam_ratio(noise, np.zeros_like(mask)) is None


def test_checkpoint_names_and_the_methods_they_give() -> None:
    from pathlib import Path

    assert parse_checkpoints(["runs/a=b/last.ckpt"]) == [(None, Path("runs/a=b/last.ckpt"))]  # a path with "="
    assert parse_checkpoints(["x.ckpt"]) == [(None, Path("x.ckpt"))]
    assert parse_checkpoints(["plain=p.ckpt", "inpaint=i.ckpt"]) == [("plain", Path("p.ckpt")),
                                                                    ("inpaint", Path("i.ckpt"))]  # fmt: skip
    with pytest.raises(ValueError, match="name each one"):
        parse_checkpoints(["p.ckpt", "inpaint=i.ckpt"])
    with pytest.raises(ValueError, match="twice"):
        parse_checkpoints(["a=p.ckpt", "a=i.ckpt"])
    assert method_names([None]) == list(METHODS)  # one unnamed checkpoint: the report keeps its old methods
    assert method_names(["p", "i"]) == ["edit:p", "pasted:p", "edit:i", "pasted:i", "smoothed"]
