"""The edit region: where two label maps differ (or a given mask), grown by a margin in mm, with a feathered band.

For the difference set S and margin M (mm), a voxel at world distance d from S gets the compositing weight

    alpha = 1                      for d <= M / 2   (regenerated)
    alpha = (M - d) / (M / 2)      for M / 2 < d < M (the feathered band)
    alpha = 0                      for d >= M       (the input file's voxels, bit for bit)

and the region is where alpha > 0. M = 0 regenerates S alone, with no band. The latent-resolution mask holds every
latent voxel whose image cell touches the region; the crop is the part of the volume that is encoded, sampled and
decoded at all (the region's bounding box with context around it), so the cost follows the edit, not the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffusion.editing.geometry import distance_mm


@dataclass(frozen=True)
class EditRegion:
    """Where an edit happens.

    Attributes:
        changed: (D, H, W) bool, the voxels whose label changes (or the requested region).
        alpha: (D, H, W) float32 compositing weight in [0, 1] (module docstring).
        margin_mm: M.
    """

    changed: np.ndarray
    alpha: np.ndarray
    margin_mm: float

    @property
    def mask(self) -> np.ndarray:
        """(D, H, W) bool: regenerated or blended voxels (alpha > 0); everything else is kept bit for bit."""
        return self.alpha > 0

    @property
    def core(self) -> np.ndarray:
        """(D, H, W) bool: fully regenerated voxels (alpha = 1)."""
        return self.alpha >= 1

    @property
    def band(self) -> np.ndarray:
        """(D, H, W) bool: the feathered band (0 < alpha < 1)."""
        return (self.alpha > 0) & (self.alpha < 1)

    def record(self, voxel_mm3: float) -> dict[str, float | int]:
        """Sizes for run records: voxels and mL of the changed set, the region and the band."""
        counts = {"changed": int(self.changed.sum()), "region": int(self.mask.sum()), "band": int(self.band.sum())}
        return {
            **{f"{k}_voxels": v for k, v in counts.items()},
            **{f"{k}_ml": round(v * voxel_mm3 / 1000.0, 4) for k, v in counts.items()},
            "margin_mm": self.margin_mm,
        }


def edit_region(changed: np.ndarray, margin_mm: float, affine: np.ndarray) -> EditRegion:
    """The region of a change set ``changed`` (D, H, W) bool grown by ``margin_mm`` on the grid of ``affine``."""
    if margin_mm < 0:
        raise ValueError(f"--margin-mm must be >= 0, got {margin_mm}")
    changed = np.asarray(changed, dtype=bool)
    if margin_mm == 0:
        return EditRegion(changed, changed.astype(np.float32), 0.0)
    d = distance_mm(changed, affine)
    alpha = np.clip((margin_mm - d) / (margin_mm / 2.0), 0.0, 1.0).astype(np.float32)
    return EditRegion(changed, alpha, float(margin_mm))


def label_difference(labels: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """(D, H, W) bool: where the two maps differ."""
    return np.asarray(labels) != np.asarray(edited)


def latent_mask(mask: np.ndarray | torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """(D, H, W) bool image mask -> (D/fd, H/fh, W/fw) bool: latent voxels whose image cell touches it."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.max_pool3d(m, kernel_size=tuple(factor), stride=tuple(factor))[0, 0] > 0


def crop_box(
    mask: np.ndarray, context: Sequence[int], factor: Sequence[int], block: Sequence[int]
) -> tuple[slice, slice, slice]:
    """Image slices of the part of the volume an edit computes: the mask's bounding box, ``context`` voxels on each
    side, grown outwards to multiples of ``factor`` and to at least ``block`` where the volume allows, clipped to it.

    Raises:
        ValueError: the mask is empty.
    """
    if not mask.any():
        raise ValueError("the edit region is empty")
    box = []
    for axis, (n, c, f, b) in enumerate(zip(mask.shape, context, factor, block)):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = max(0, int(idx[0]) - int(c)), min(n, int(idx[-1]) + 1 + int(c))
        lo, hi = lo // f * f, min(n, -(-hi // f) * f)
        while hi - lo < min(b, n):  # grow towards the block size, alternately on each side
            if lo > 0:
                lo = max(0, lo - f)
            if hi - lo < min(b, n) and hi < n:
                hi = min(n, hi + f)
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]
