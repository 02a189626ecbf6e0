"""Known answers for PSNR, RMSE, SSIM (3D, slice-wise 2D) and MS-SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics.regression import compute_ms_ssim, compute_ssim_and_cs
from skimage.metrics import structural_similarity

from evaluation import image_metrics as im

SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def _pair(shape: tuple[int, ...], seed: int = 0, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = torch.nn.functional.avg_pool3d(x[None, None], 3, 1, 1)[0, 0] if x.dim() == 3 else x  # some structure
    y = (x + noise * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_identical_volumes_give_perfect_scores():
    x, _ = _pair((16, 16, 16))
    assert im.rmse(x, x) == 0.0
    assert im.psnr(x, x) == math.inf
    assert im.ssim3d(x, x)[0] == pytest.approx(1.0, abs=1e-12)
    assert im.ssim2d_slices(x, x)[0] == pytest.approx(1.0, abs=1e-12)
    assert im.msssim(x, x)[0] == pytest.approx(1.0, abs=1e-12)


def test_psnr_and_rmse_match_their_definitions():
    x = torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5
    y = x + 0.1  # MSE = 0.01 exactly (up to float32 rounding of the offset)
    assert im.rmse(x, y) == pytest.approx(0.1, rel=1e-6)
    assert im.psnr(x, y) == pytest.approx(20.0, abs=1e-4)
    assert im.psnr(x, y, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2.0), abs=1e-4)


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 24, 20)], ids=["32cube", "16x24x20"])
def test_ssim3d_matches_scikit_image(shape):
    x, y = _pair(shape)
    ours, window = im.ssim3d(x, y)
    assert window == (11, 11, 11)
    assert ours == pytest.approx(structural_similarity(x.numpy(), y.numpy(), **SK), abs=1e-6)
    assert 0.2 < ours < 0.99  # not a degenerate case


def test_ssim2d_matches_scikit_image_per_slice():
    x, y = _pair((6, 32, 32), seed=3)
    ours, window = im.ssim2d_slices(x, y)
    ref = np.mean([structural_similarity(x[i].numpy(), y[i].numpy(), **SK) for i in range(6)])
    assert window == (11, 11)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_small_axis_uses_smaller_window_and_matches_monai():
    x, y = _pair((8, 32, 32), seed=4)
    ours, window = im.ssim3d(x, y)
    assert window == (7, 11, 11)
    ssim_map, _ = compute_ssim_and_cs(y[None, None], x[None, None], 3, kernel_size=window, kernel_sigma=(1.5,) * 3)
    assert ours == pytest.approx(float(ssim_map.mean()), abs=1e-5)


def test_ssim_window_rule():
    assert im.ssim_window((32, 256, 256)) == (11, 11, 11)
    assert im.ssim_window((10, 4, 1)) == (9, 3, 1)
    with pytest.raises(ValueError, match="odd"):
        im.ssim_window((16, 16), window=10)


def test_gaussian_window_is_normalised():
    taps = im.gaussian_1d(11, 1.5)
    assert float(taps.sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(taps, taps.flip(0))


@pytest.mark.parametrize(
    ("shape", "scales", "windows"),
    [((32, 32, 32), 3, (7, 7, 7)), ((32, 256, 256), 3, (7, 11, 11)), ((16, 16, 16), 2, (7, 7, 7))],
    ids=["32cube", "32x256x256", "16cube"],
)
def test_msssim_scale_selection_is_valid_for_the_size(shape, scales, windows):
    s = im.msssim_settings(shape)
    assert (s.scales, s.windows) == (scales, windows)
    assert sum(s.weights) == pytest.approx(1.0)
    # Every axis still holds the window at the coarsest scale (valid filtering possible).
    assert all(dim // 2 ** (s.scales - 1) >= w for dim, w in zip(shape, s.windows))
    # Ratios of Wang's weights are kept.
    assert s.weights[1] / s.weights[0] == pytest.approx(0.2856 / 0.0448)


def test_msssim_too_small_volume_is_rejected():
    with pytest.raises(ValueError, match="MS-SSIM needs"):
        im.msssim_settings((6, 32, 32))


def test_msssim_matches_monai_with_the_same_settings():
    x, y = _pair((32, 32, 32), seed=5)
    ours, s = im.msssim(x, y)
    ref = compute_ms_ssim(y[None, None].float(), x[None, None].float(), 3, kernel_size=s.windows, weights=s.weights)
    assert ours == pytest.approx(float(ref), abs=1e-4)  # MONAI filters in float32, we in float64
    assert ours < 1.0


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        im.ssim3d(torch.zeros(8, 8, 8), torch.zeros(8, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        im.rmse(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="D, H, W"):
        im.ssim3d(torch.zeros(8, 8), torch.zeros(8, 8))


def test_slice_indices():
    assert im.slice_indices(10, 4) == [0, 4, 8]
    with pytest.raises(ValueError, match="slice step"):
        im.slice_indices(10, 0)
