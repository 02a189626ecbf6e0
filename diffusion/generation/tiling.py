"""Overlapping windows over a latent grid and the weights that blend them.

Volumes larger than the training block are sampled MultiDiffusion-style (Bar-Tal et al. 2023,
https://arxiv.org/abs/2302.08113): at every denoising step the denoiser runs on overlapping latent windows of the
training size, and the predictions are averaged with smooth weights before one scheduler step on the whole latent.
Every window sees the same noisy latent, so the blocks agree with each other instead of being stitched afterwards.
"""

from __future__ import annotations

import math

import torch


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``window`` covering ``[0, size)`` with at least ``overlap`` overlap.

    The last window is aligned to the end, so every index is covered and no window leaves the volume.

    Args:
        size: axis length (>= 1).
        window: window length; windows longer than the axis are clipped to it.
        overlap: fraction of ``window`` shared by neighbours, in [0, 1).
    """
    if size < 1 or window < 1:
        raise ValueError(f"size and window must be >= 1, got {size}, {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    window = min(window, size)
    if window == size:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / stride) + 1
    starts = [min(i * stride, size - window) for i in range(n)]
    return sorted(set(starts))


def windows(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float) -> list[tuple[slice, ...]]:
    """All 3-D windows (as slice triples over (d, h, w)) tiling ``shape``; see :func:`window_starts`."""
    axes = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
    win = [min(w, s) for s, w in zip(shape, window)]
    return [
        (slice(a, a + win[0]), slice(b, b + win[1]), slice(c, c + win[2]))
        for a in axes[0]
        for b in axes[1]
        for c in axes[2]
    ]


def blend_weight(window: tuple[int, int, int], border: float = 0.25) -> torch.Tensor:
    """Separable weight (d, h, w) in (0, 1]: 1 in the middle, falling linearly over ``border`` of each side.

    Never exactly 0, so a voxel covered by a single window keeps its value after normalisation.
    """
    parts = []
    for n in window:
        ramp = max(1, int(round(n * border)))
        idx = torch.arange(n, dtype=torch.float32)
        dist = torch.minimum(idx + 1, n - idx)  # 1 at the edges, growing inwards
        parts.append(torch.clamp(dist / ramp, max=1.0))
    return parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :]
