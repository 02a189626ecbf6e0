"""Paired image metrics on volumes already mapped to [0, 1]: PSNR, RMSE, SSIM (3D and slice-wise 2D), MS-SSIM.

Conventions (the README's metric section repeats them):
- Inputs are (D, H, W) tensors in [0, 1]; the data range is therefore 1.
- MSE/RMSE are means over all voxels; PSNR = 10 log10(1 / MSE) in dB, ``inf`` for identical volumes.
- SSIM (Wang et al. 2004) with a Gaussian window, sigma 1.5, normalised to sum 1, K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, evaluated on the *valid* region (no padding) and averaged. This is
  exactly scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``, whose window is 11 taps. Per axis the window is 11 or, for
  an axis shorter than 11 voxels, the largest odd number that fits (the Gaussian truncated and renormalised).
  The window used is reported.
- 2D SSIM: the same on every (H, W) slice along D, averaged over slices.
- MS-SSIM (Wang et al. 2003): products of the mean contrast-structure term at scales 1..n-1 and the mean SSIM at
  scale n, each to its weight, 2x average pooling between scales (as MONAI's ``compute_ms_ssim``). The number
  of scales is the largest n <= 5 for which every axis still has >= 7 voxels at the coarsest scale; the window
  per axis is min(11, largest odd <= that size); the weights are the first n of Wang's
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), renormalised to sum 1. Scales, windows and weights are reported.

Filtering is separable (one 1D pass per axis), in float64, so large volumes stay cheap on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MSSSIM_MIN_COARSE = 7  # voxels per axis at the coarsest scale: a sigma-1.5 Gaussian truncated at +-2 sigma


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"volumes must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error over all voxels, in float64."""
    _check_pair(x, y)
    return float(torch.mean((x.double() - y.double()) ** 2))


def rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Root mean squared error over all voxels (units of the [0, 1] range)."""
    return math.sqrt(mse(x, y))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio 10 log10(data_range² / MSE) in dB; ``math.inf`` when MSE is 0."""
    err = mse(x, y)
    return math.inf if err == 0.0 else 10.0 * math.log10(data_range**2 / err)


def odd_floor(n: int) -> int:
    """Largest odd integer <= n (at least 1)."""
    return max(1, n if n % 2 == 1 else n - 1)


def ssim_window(shape: tuple[int, ...], window: int = SSIM_WINDOW) -> tuple[int, ...]:
    """Per-axis window: ``window`` or, on an axis shorter than it, the largest odd size that fits."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    return tuple(min(window, odd_floor(int(s))) for s in shape)


def gaussian_1d(size: int, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) float64 Gaussian taps centred on the middle tap, normalised to sum 1."""
    dist = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    taps = torch.exp(-(dist**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(x: torch.Tensor, windows: tuple[int, ...], sigma: float) -> torch.Tensor:
    """Separable Gaussian filter over the trailing len(windows) axes of (N, *spatial), valid region only."""
    nd = len(windows)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    out = x.unsqueeze(1)  # (N, 1, *spatial)
    for axis, size in enumerate(windows):
        if size == 1:
            continue
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = size
        out = conv(out, gaussian_1d(size, sigma).to(out.device).view(shape))
    return out.squeeze(1)


def ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, windows: tuple[int, ...], sigma: float = SSIM_SIGMA, data_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term of each image in a batch.

    Args:
        x, y: (N, *spatial) tensors with 1-3 spatial axes, same shape.
        windows: Gaussian window size per spatial axis (odd, <= the axis length).
        sigma: Gaussian standard deviation in voxels.
        data_range: max - min of the intensity range (1 for [0, 1] volumes).

    Returns:
        (ssim (N,), cs (N,)) float64, each the mean of its map over the valid region.
    """
    ssim_map, cs_map = ssim_maps(x, y, windows, sigma, data_range)
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ssim_maps(
    x: torch.Tensor, y: torch.Tensor, windows: tuple[int, ...], sigma: float = SSIM_SIGMA, data_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSIM and contrast-structure maps behind :func:`ssim_and_cs` (valid mode: each spatial axis shrinks by
    its window - 1; map voxel i is centred on input voxel i + window // 2).

    Args:
        x, y: (N, *spatial) tensors with 1-3 spatial axes, same shape.
        windows, sigma, data_range: see :func:`ssim_and_cs`.

    Returns:
        (ssim map, cs map), float64, (N, *valid spatial).
    """
    _check_pair(x, y)
    spatial = x.shape[1:]
    if len(windows) != len(spatial) or not 1 <= len(spatial) <= 3:
        raise ValueError(f"need 1-3 spatial axes and one window per axis, got shape {tuple(x.shape)}, {windows}")
    if any(w > s or w % 2 == 0 for w, s in zip(windows, spatial)):
        raise ValueError(f"windows {windows} must be odd and fit the spatial shape {tuple(spatial)}")
    x, y = x.double(), y.double()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, windows, sigma), _filter_valid(y, windows, sigma)
    var_x = _filter_valid(x * x, windows, sigma) - mu_x**2
    var_y = _filter_valid(y * y, windows, sigma) - mu_y**2
    cov = _filter_valid(x * y, windows, sigma) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    return (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map, cs_map


def ssim3d(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW) -> tuple[float, tuple[int, int, int]]:
    """3D SSIM of two (D, H, W) volumes in [0, 1].

    Returns:
        (SSIM, window used per axis).
    """
    _check_pair(x, y)
    if x.dim() != 3:
        raise ValueError(f"expected (D, H, W) volumes, got {tuple(x.shape)}")
    windows = ssim_window(tuple(x.shape), window)
    value, _ = ssim_and_cs(x[None], y[None], windows)
    return float(value[0]), windows


def ssim2d_slices(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW) -> tuple[float, tuple[int, int]]:
    """Slice-wise 2D SSIM of two (D, H, W) volumes: SSIM of each (H, W) slice, averaged over D.

    Returns:
        (mean slice SSIM, window used per in-plane axis).
    """
    _check_pair(x, y)
    if x.dim() != 3:
        raise ValueError(f"expected (D, H, W) volumes, got {tuple(x.shape)}")
    windows = ssim_window(tuple(x.shape[1:]), window)
    values, _ = ssim_and_cs(x, y, windows)  # slices are the batch
    return float(values.mean()), windows


@dataclass(frozen=True)
class MSSSIMSettings:
    """Scales, per-axis window and weights MS-SSIM uses for one volume shape."""

    scales: int
    windows: tuple[int, ...]
    weights: tuple[float, ...]

    def describe(self) -> dict:
        return {"scales": self.scales, "window": list(self.windows), "weights": [round(w, 6) for w in self.weights]}


def msssim_settings(shape: tuple[int, ...], max_scales: int = 5, window: int = SSIM_WINDOW) -> MSSSIMSettings:
    """Pick the MS-SSIM scales, windows and weights valid for a volume shape (rule in the module docstring).

    Raises:
        ValueError: an axis shorter than 7 voxels (no scale is valid) or ``max_scales`` outside 1..5.
    """
    if not 1 <= max_scales <= len(MSSSIM_WEIGHTS):
        raise ValueError(f"max_scales must be in 1..{len(MSSSIM_WEIGHTS)}, got {max_scales}")
    for n in range(max_scales, 0, -1):
        coarse = [int(s) // 2 ** (n - 1) for s in shape]
        if all(c >= MSSSIM_MIN_COARSE for c in coarse):
            weights = MSSSIM_WEIGHTS[:n]
            total = sum(weights)
            return MSSSIMSettings(
                scales=n,
                windows=tuple(min(window, odd_floor(c)) for c in coarse),
                weights=tuple(w / total for w in weights),
            )
    raise ValueError(f"MS-SSIM needs >= {MSSSIM_MIN_COARSE} voxels on every axis, got shape {tuple(shape)}")


def msssim(x: torch.Tensor, y: torch.Tensor, settings: MSSSIMSettings | None = None) -> tuple[float, MSSSIMSettings]:
    """Multi-scale SSIM of two same-shape volumes (any 1-3 spatial axes) in [0, 1].

    Args:
        x, y: (*spatial) tensors.
        settings: scales/windows/weights; chosen by :func:`msssim_settings` when None.

    Returns:
        (MS-SSIM, settings used).
    """
    _check_pair(x, y)
    settings = settings or msssim_settings(tuple(x.shape))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim()]
    a, b = x.double()[None], y.double()[None]  # (1, *spatial)
    terms = []
    for scale in range(settings.scales):
        ssim_val, cs_val = ssim_and_cs(a, b, settings.windows)
        # Negative means (anti-correlated structure) would make fractional powers undefined; MONAI and
        # pytorch_msssim clamp at 0 the same way.
        terms.append(torch.relu(ssim_val if scale == settings.scales - 1 else cs_val))
        if scale < settings.scales - 1:
            a, b = pool(a[:, None], kernel_size=2)[:, 0], pool(b[:, None], kernel_size=2)[:, 0]
    weights = torch.tensor(settings.weights, dtype=torch.float64)
    value = torch.prod(torch.stack(terms)[:, 0] ** weights)
    return float(value), settings


def slice_indices(depth: int, step: int) -> list[int]:
    """Indices of the slices along D used by the slice-wise feature metrics (every ``step``-th, from 0)."""
    if step < 1:
        raise ValueError(f"slice step must be >= 1, got {step}")
    return list(range(0, depth, step))
