"""Resampling a label map to the training grid and back, and padding to sizes the model can sample.

Shapes are (D, H, W) = NIfTI (K, I, J), as everywhere in the project; voxel sizes are given in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resampled_shape(
    shape: tuple[int, int, int], voxel: tuple[float, float, float], target: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Shape covering the same field of view at voxel size ``target`` (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * v / t))) for n, v, t in zip(shape, voxel, target))  # type: ignore[return-value]


def resample_label(label: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour resampling of an integer label map (D, H, W) to ``shape`` (voxel centres aligned)."""
    if tuple(label.shape) == tuple(shape):
        return label
    out = F.interpolate(label[None, None].float(), size=shape, mode="nearest-exact")
    return out[0, 0].round().to(label.dtype)


def resample_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of an image (D, H, W) to ``shape`` (voxel centres aligned, no corner pinning)."""
    if tuple(image.shape) == tuple(shape):
        return image
    return F.interpolate(image[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]


def padded_shape(
    shape: tuple[int, int, int], multiple: tuple[int, int, int], minimum: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Smallest shape >= ``shape`` and >= ``minimum`` whose axes are multiples of ``multiple``."""
    return tuple(  # type: ignore[return-value]
        max(math.ceil(n / m) * m, math.ceil(lo / m) * m) for n, m, lo in zip(shape, multiple, minimum)
    )


def pad_label(label: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad a label map (D, H, W) symmetrically to ``shape`` by edge replication.

    Edge replication (not background) keeps anatomy continuous across the border, so the model does not invent a
    body edge where the input was merely cut.

    Returns:
        the padded map and the slices that crop the padded volume back to the input's extent.
    """
    pads, crop = [], []
    for n, target in zip(label.shape, shape):
        if target < n:
            raise ValueError(f"cannot pad {tuple(label.shape)} to the smaller {tuple(shape)}")
        before = (target - n) // 2
        pads.append((before, target - n - before))
        crop.append(slice(before, before + n))
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
    padded = F.pad(label[None, None].float(), flat, mode="replicate")[0, 0].to(label.dtype)
    return padded, tuple(crop)
