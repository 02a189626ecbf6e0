"""The stage-2 option ``inpaint_inputs``: the denoiser also sees the masked real latent and the region mask.

As in DiffTumor (Chen et al., CVPR 2024) and Stable Diffusion's inpainting model, the denoiser of a model trained with
``inpaint_inputs: true`` takes C + 1 more input channels, concatenated to the noisy latent (C channels):

* the masked real latent ``z0 · (1 − m)``: the clean, normalised latent where it is known, 0 in the region;
* the region mask ``m`` at latent resolution (1 = regenerate, 0 = known).

Training draws a random region per item with probability ``p`` (:func:`random_region_masks`: an ellipsoid or a box
covering a few per cent to about half of the latent) and otherwise ``m = 1`` everywhere, which makes the extra
inputs ``(0, 1)`` (:func:`plain_context`): the same model still synthesises whole volumes, and generation and
validation pass exactly that. Editing (:mod:`diffusion.editing.inpaint`) passes the real scan's latent and the edit
region (:func:`inpaint_context`). This module only builds the tensors; the model concatenates them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Fraction of the latent a random region covers: drawn uniformly in this range (before rounding to voxels).
REGION_FRACTION = (0.03, 0.5)


def inpaint_context(z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The extra denoiser inputs for known latents ``z0`` and a region ``mask``.

    Args:
        z0: (B, C, d, h, w) clean normalised latent (only its values outside the mask are used).
        mask: (B, 1, d, h, w) or (d, h, w), 1 (or True) where the latent is regenerated.

    Returns:
        (B, C + 1, d, h, w) float32: ``z0 · (1 − m)`` then ``m``.
    """
    m = mask.to(z0.device, torch.float32)
    if m.dim() == 3:
        m = m[None, None].expand(z0.shape[0], 1, *m.shape)
    if m.shape[0] != z0.shape[0] or m.shape[1] != 1 or m.shape[2:] != z0.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit the latent {tuple(z0.shape)}")
    return torch.cat((z0.float() * (1.0 - m), m), dim=1)


def plain_context(batch: int, channels: int, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """The extra inputs of plain synthesis (nothing known, ``m = 1``): (B, C + 1, d, h, w), zeros then ones."""
    out = torch.zeros(batch, channels + 1, *shape, device=device)
    out[:, channels] = 1.0
    return out


def random_region_mask(
    shape: Sequence[int], generator: torch.Generator | None = None, fraction: Sequence[float] = REGION_FRACTION
) -> torch.Tensor:
    """One random region of a latent grid: an ellipsoid or an axis-aligned box.

    The target fraction f is uniform in ``fraction``; the axes' relative lengths are log-uniform within a factor 2
    of each other; the centre is uniform among positions that keep the shape inside the grid (the grid's centre
    where it does not fit). Always at least one voxel.

    Args:
        shape: (d, h, w) latent grid.
        generator: CPU RNG (None: the global one, e.g. the training RNG seeded by ``seed``).
        fraction: (lo, hi) of the target fraction of the grid, 0 < lo <= hi <= 1.

    Returns:
        (d, h, w) bool, True in the region.
    """
    lo, hi = (float(v) for v in fraction)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"fraction must satisfy 0 < lo <= hi <= 1, got {list(fraction)}")
    size = torch.tensor([int(s) for s in shape], dtype=torch.float64)
    u = torch.rand(6, generator=generator, dtype=torch.float64)
    f = lo + (hi - lo) * float(u[0])
    box = bool(u[1] < 0.5)
    aspect = torch.exp((u[2:5] - 0.5) * math.log(2.0))
    aspect = aspect / aspect.prod() ** (1.0 / 3.0)
    # full lengths (voxels) whose box (or inscribed ellipsoid, pi / 6 of the box) covers f of the grid
    scale = (f * float(size.prod()) / (1.0 if box else math.pi / 6.0)) ** (1.0 / 3.0)
    length = torch.minimum(aspect * scale, size).clamp(min=1.0)
    free = (size - length).clamp(min=0.0)
    centre = free * torch.rand(3, generator=generator, dtype=torch.float64) + length / 2.0
    axes = [torch.arange(int(n), dtype=torch.float64) + 0.5 for n in size.tolist()]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # voxel centres
    rel = (grid - centre) / (length / 2.0)
    mask = rel.abs().amax(-1) <= 1.0 if box else (rel**2).sum(-1) <= 1.0
    if not mask.any():
        mask[tuple(int(c) for c in centre.clamp(max=size - 1).tolist())] = True
    return mask


def random_region_masks(
    batch: int,
    shape: Sequence[int],
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training masks: per item a :func:`random_region_mask` with probability ``p``, else all ones.

    Args:
        batch: B.
        shape: (d, h, w) latent grid.
        p: probability of a random region, in [0, 1].
        generator: CPU RNG (None: the global one).
        device: where the masks go.

    Returns:
        (B, 1, d, h, w) float32, 1 = regenerate.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    out = torch.ones(batch, 1, *shape)
    draws = torch.rand(batch, generator=generator)
    for i in range(batch):
        if draws[i] < p:
            out[i, 0] = random_region_mask(shape, generator).float()
    return out.to(device)


__all__ = ["REGION_FRACTION", "inpaint_context", "plain_context", "random_region_mask", "random_region_masks"]
