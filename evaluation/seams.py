"""Seam strength of a volume generated window by window: the seam ratio.

Along each axis with window borders, the mean squared intensity step between neighbouring planes that straddle
a border, divided by the same mean over all other neighbouring planes (pooled over those axes). 1 means the
borders cannot be told from the inside; a visible seam raises it above 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_borders(starts_stops: Sequence[Sequence[tuple[int, int]]], size: Sequence[int]) -> list[list[int]]:
    """Per axis, the plane indices p (0 < p < size) where a window starts or stops: planes p-1 | p straddle it.

    Args:
        starts_stops: per axis, the (start, stop) of every window along it, in voxels of the volume.
        size: (D, H, W) of the volume.
    """
    return [sorted({e for pair in pairs for e in pair if 0 < e < int(n)}) for pairs, n in zip(starts_stops, size)]


def seam_ratio(image: np.ndarray, borders: Sequence[Sequence[int]]) -> float | None:
    """Squared steps across window borders / squared steps elsewhere (see the module docstring).

    Args:
        image: (D, H, W) volume.
        borders: per axis, plane indices p whose difference ``x[p] - x[p-1]`` crosses a border
            (:func:`window_borders`).

    Returns:
        The ratio; None when there is no border plane, no other plane, or the other planes have no step at all.
    """
    img = np.asarray(image, dtype=np.float64)
    across, inside = [], []
    for axis, planes in enumerate(borders):
        if not planes:
            continue
        step = np.diff(img, axis=axis) ** 2  # index p-1 holds x[p] - x[p-1]
        energy = step.mean(axis=tuple(a for a in range(3) if a != axis))
        mask = np.zeros(energy.size, dtype=bool)
        mask[[p - 1 for p in planes]] = True
        across.append(energy[mask])
        inside.append(energy[~mask])
    if not across:
        return None
    return _ratio(across, inside)


def boundary_seam_ratio(image: np.ndarray, region: np.ndarray, shell: int = 2) -> float | None:
    """The seam ratio at a region's boundary (an edited or inpainted region instead of window borders).

    Squared steps between face neighbours on opposite sides of the boundary, over the squared steps between
    neighbours within ``shell`` voxels of it that do not cross it (both inside or both outside), pooled over the
    three axes; 1 means the boundary cannot be told from its surroundings.

    Args:
        image: (D, H, W) volume.
        region: (D, H, W) bool.
        shell: how far from the boundary (voxels, along the axes) the reference steps are taken.

    Returns:
        The ratio; None for an empty or full region, or no step at all near it.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    inside = np.asarray(region, dtype=bool)
    if not inside.any() or inside.all():
        return None
    near = ndimage.binary_dilation(inside, iterations=shell) & ~ndimage.binary_erosion(inside, iterations=shell)
    across, other = [], []
    for axis in range(3):
        step = np.diff(img, axis=axis) ** 2
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        cross = inside[tuple(a)] != inside[tuple(b)]
        ref = near[tuple(a)] & near[tuple(b)] & ~cross
        across.append(step[cross])
        other.append(step[ref])
    return _ratio(across, other)


def _ratio(across: list[np.ndarray], other: list[np.ndarray]) -> float | None:
    """Mean of the pooled ``across`` steps over the mean of the pooled ``other`` steps (None when undefined)."""
    across_all, other_all = np.concatenate(across), np.concatenate(other)
    if across_all.size == 0 or other_all.size == 0 or other_all.mean() <= 0:
        return None
    return float(across_all.mean() / other_all.mean())
