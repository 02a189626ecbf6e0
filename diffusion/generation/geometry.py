"""Padding a label map to sizes the model can sample (its resampling is :mod:`dataset.resample`).

Shapes are (D, H, W) = NIfTI (K, I, J), as everywhere in the project; voxel sizes are given in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
