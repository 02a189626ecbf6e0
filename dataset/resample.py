"""Resampling a volume onto a new axis-aligned grid: the one implementation behind preprocessing's ``spacing``, the
MNI152 subjects and generation on label maps of another voxel size.

The new grid keeps the source's orientation. Along each axis its voxel ``o`` sits at source index
``offset + step * o`` (voxel centres at integer indices), described by an :class:`AxisGrid`. Images are
interpolated linearly (``order=1``), label maps take the nearest voxel (``order=0``), both by
``scipy.ndimage.map_coordinates`` in float64. ``antialias`` first smooths with a Gaussian of sigma
``(step - 1) / 2`` source voxels on the axes that shrink (the rule of ``skimage.transform.resize``), so that
downsampling does not alias. ``tests/dataset/test_resample.py`` checks the result against TorchIO (SimpleITK) on an
oblique, anisotropic grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Output planes interpolated per call, so that the coordinate arrays of a large CT stay small.
_PLANES_PER_CHUNK = 16


@dataclass(frozen=True)
class AxisGrid:
    """Where the voxels of a new grid sit along one source axis, in source voxel indices.

    Attributes:
        coords: (n_out,) source index of each new voxel's centre.
        step: source voxels per new voxel (> 1 shrinks).
        offset: source index of new voxel 0 (the translation of the new grid's affine).
    """

    coords: np.ndarray
    step: float
    offset: float


def same_extent(n_in: int, n_out: int) -> AxisGrid:
    """``n_out`` voxels over the field of view of ``n_in`` voxels (the outer voxel edges stay where they were)."""
    step = 1.0 / (n_out / n_in)
    # The coordinates are computed as scipy.ndimage.zoom(grid_mode=True) computes them, which keeps the numbers of
    # datasets preprocessed with zoom bit for bit.
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    return AxisGrid(coords, step, 0.5 * step - 0.5)


def box(lo: float, hi: float, n_out: int) -> AxisGrid:
    """``n_out`` voxels over the source box from voxel edge ``lo`` to edge ``hi`` (voxel ``i`` spans edges i..i+1)."""
    step = (hi - lo) / n_out
    offset = lo - 0.5 + 0.5 * step
    return AxisGrid(offset + step * np.arange(n_out), step, offset)


def same_extent_shape(shape: Sequence[int], voxel: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """Shape covering the same field of view at voxel size ``target`` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * v / t))) for n, v, t in zip(shape, voxel, target))  # type: ignore[return-value]


def index_map(grids: Sequence[AxisGrid]) -> np.ndarray:
    """(4, 4) map from new voxel indices to source voxel indices: ``source_affine @ index_map`` is the new affine."""
    out = np.diag([*(g.step for g in grids), 1.0])
    out[:3, 3] = [g.offset for g in grids]
    return out


def resample(
    volume: np.ndarray,
    grids: Sequence[AxisGrid],
    *,
    order: int,
    mode: str = "nearest",
    cval: float = 0.0,
    antialias: bool = False,
) -> np.ndarray:
    """Resample a 3-D volume onto the grid ``grids`` (one :class:`AxisGrid` per axis).

    Args:
        volume: (A, B, C) array, any axis order; its dtype is kept.
        grids: three grids, in the axis order of ``volume``.
        order: 1 (linear, images) or 0 (nearest voxel, label maps).
        mode: how points outside the source are filled: ``"nearest"`` (edge value) or ``"constant"`` (``cval``).
        cval: the value of ``"constant"``.
        antialias: Gaussian smoothing before shrinking (images only).

    Returns:
        (len(grids[0].coords), len(grids[1].coords), len(grids[2].coords)) array of ``volume``'s dtype.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    if len(grids) != 3 or volume.ndim != 3:
        raise ValueError(f"need a 3-D volume and three grids, got {volume.ndim}-D and {len(grids)}")
    if antialias:
        volume = ndi.gaussian_filter(volume, [max(0.0, (g.step - 1.0) / 2.0) for g in grids])
    # map_coordinates interpolates each point on its own (no spline prefilter at order <= 1), so a volume can be
    # done in slabs of planes with the same result.
    out = np.empty([len(g.coords) for g in grids], dtype=volume.dtype)
    for start in range(0, out.shape[0], _PLANES_PER_CHUNK):
        rows = grids[0].coords[start : start + _PLANES_PER_CHUNK]
        coords = np.meshgrid(rows, grids[1].coords, grids[2].coords, indexing="ij")
        out[start : start + len(rows)] = ndi.map_coordinates(volume, coords, order=order, mode=mode, cval=cval)
    return out


def resample_to_shape(volume: np.ndarray, shape: Sequence[int], *, order: int, antialias: bool = False) -> np.ndarray:
    """Resample a 3-D volume to ``shape`` over the same field of view (edges beyond it repeat the edge voxel)."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    return resample(volume, [same_extent(n, m) for n, m in zip(volume.shape, shape)], order=order, antialias=antialias)
