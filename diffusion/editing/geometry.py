"""World geometry of (D, H, W) label arrays: voxel centres in mm, distances in mm, and growing masks by mm.

Arrays are (D, H, W) = NIfTI (K, I, J) (:mod:`dataset.nifti`); the affine is that of the stored (I, J, K) array,
so the world position of array voxel (d, h, w) is ``A[:3, :3] @ (h, w, d) + A[:3, 3]``. Distances use the
affine's column lengths as voxel sizes, per axis (:func:`dataset.nifti.voxel_size_dhw`): exact on orthogonal
grids of any voxel size and orientation (axial, anisotropic, oblique), an approximation on sheared grids.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dataset.nifti import voxel_size_dhw


def world_coordinates(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of every voxel centre: (D, H, W, 3) float64 (x, y, z of the affine's space)."""
    d, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ijk = np.stack((h, w, d), axis=-1)  # stored NIfTI index order
    aff = np.asarray(affine, dtype=np.float64)
    return ijk @ aff[:3, :3].T + aff[:3, 3]


def world_to_index(point: tuple[float, float, float], affine: np.ndarray) -> np.ndarray:
    """(D, H, W) fractional array index of a world point (mm)."""
    aff = np.asarray(affine, dtype=np.float64)
    h, w, d = np.linalg.solve(aff[:3, :3], np.asarray(point, dtype=np.float64) - aff[:3, 3])
    return np.array([d, h, w])


def distance_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the nearest voxel of ``mask`` (0 inside it; inf when it is empty).

    Args:
        mask: (D, H, W) bool.
        affine: (4, 4) affine of the stored array.

    Returns:
        (D, H, W) float64.
    """
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=voxel_size_dhw(affine))


def grow_mm(mask: np.ndarray, mm: float, affine: np.ndarray) -> np.ndarray:
    """Voxels within ``mm`` millimetres of ``mask`` (centre to centre, inclusive); ``mm`` = 0 returns a copy."""
    if mm < 0:
        raise ValueError(f"a margin is >= 0 mm, got {mm}")
    return distance_mm(mask, affine) <= mm + 1e-6
