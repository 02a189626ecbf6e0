"""Label-map edits for the common cases, in millimetres (SPEC 13): grow, shrink, insert, replace.

Every edit takes a (D, H, W) integer map and the affine of its stored NIfTI array and returns a new map; the input
is never modified. ``within`` (a (D, H, W) bool mask) limits an edit to a region. Distances are world distances
(:mod:`diffusion.editing.geometry`), so "grow by 2 mm" means the same on a 1 mm isotropic grid and on a
0.7 x 0.7 x 5 mm oblique one. Any edited map made in a viewer (ITK-SNAP, 3D Slicer) works as well; these cover the
edits that can be written as one command-line option (:func:`parse_edit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dataset.nifti import voxel_size_dhw
from diffusion.editing.geometry import distance_mm, world_coordinates


def _within(label: np.ndarray, within: np.ndarray | None) -> np.ndarray:
    if within is None:
        return np.ones(label.shape, dtype=bool)
    if within.shape != label.shape:
        raise ValueError(f"region {within.shape} and label map {label.shape} differ in shape")
    return within.astype(bool)


def _check_class(k: int, label_nc: int | None, what: str) -> None:
    if k < 0 or (label_nc is not None and k >= label_nc):
        raise ValueError(f"{what}: class {k} is not one of 0..{(label_nc or 1) - 1}")


def grow(label: np.ndarray, k: int, mm: float, affine: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Class ``k`` grown by ``mm``: every voxel within ``mm`` of class k (and inside ``within``) becomes k."""
    if mm < 0:
        raise ValueError(f"grow by >= 0 mm, got {mm}")
    out = label.copy()
    out[(distance_mm(label == k, affine) <= mm + 1e-6) & _within(label, within)] = k
    return out


def shrink(label: np.ndarray, k: int, mm: float, affine: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Class ``k`` shrunk by ``mm``: its voxels within ``mm`` of another class take that nearest other class.

    A class with no other class in the map cannot shrink (ValueError).
    """
    if mm < 0:
        raise ValueError(f"shrink by >= 0 mm, got {mm}")
    other = label != k
    if not other.any():
        raise ValueError(f"class {k} fills the whole map: there is nothing to shrink it into")
    dist, idx = ndimage.distance_transform_edt(other == 0, sampling=voxel_size_dhw(affine), return_indices=True)
    change = (~other) & (dist <= mm + 1e-6) & _within(label, within)
    out = label.copy()
    out[change] = label[tuple(i[change] for i in idx)]  # the nearest voxel of another class
    return out


def insert_ellipsoid(
    label: np.ndarray,
    k: int,
    centre: Sequence[float],
    radii_mm: Sequence[float],
    affine: np.ndarray,
    parent: Sequence[int] | None = None,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """An ellipsoid of class ``k`` centred at a world point (mm), axes along the world x, y, z axes.

    Args:
        centre: (x, y, z) in the affine's world space (mm).
        radii_mm: one radius (a sphere) or three (x, y, z).
        parent: classes the insert may replace (e.g. only inside the liver); None: any class.
        within: optional further region.
    """
    radii = np.broadcast_to(np.asarray(radii_mm, dtype=np.float64), (3,))
    if (radii <= 0).any():
        raise ValueError(f"radii must be > 0 mm, got {list(radii)}")
    rel = (world_coordinates(label.shape, affine) - np.asarray(centre, dtype=np.float64)) / radii
    inside = (rel**2).sum(-1) <= 1.0
    if parent is not None:
        inside &= np.isin(label, list(parent))
    inside &= _within(label, within)
    out = label.copy()
    out[inside] = k
    return out


def replace(label: np.ndarray, a: int, b: int, within: np.ndarray | None = None) -> np.ndarray:
    """Class ``a`` replaced by ``b`` (inside ``within`` when given)."""
    out = label.copy()
    out[(label == a) & _within(label, within)] = b
    return out


@dataclass(frozen=True)
class LabelEdit:
    """One edit from the command line: ``kind`` and its parsed arguments (see :func:`parse_edit`)."""

    kind: str
    text: str
    k: int
    mm: float = 0.0
    b: int = 0
    centre: tuple[float, ...] = ()
    radii: tuple[float, ...] = ()
    parent: tuple[int, ...] | None = None

    def apply(self, label: np.ndarray, affine: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
        """This edit applied to ``label`` (D, H, W)."""
        if self.kind == "grow":
            return grow(label, self.k, self.mm, affine, within)
        if self.kind == "shrink":
            return shrink(label, self.k, self.mm, affine, within)
        if self.kind == "replace":
            return replace(label, self.k, self.b, within)
        return insert_ellipsoid(label, self.k, self.centre, self.radii, affine, self.parent, within)


def _numbers(text: str, what: str, n: tuple[int, ...], cast: type = float) -> tuple:
    try:
        vals = tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None
    if len(vals) not in n:
        raise ValueError(f"{what}: expected {' or '.join(map(str, n))} value(s), got {text!r}")
    if not all(np.isfinite(vals)):
        raise ValueError(f"{what}: {text!r} is not finite")
    return vals


def parse_edit(kind: str, text: str, label_nc: int | None = None) -> LabelEdit:
    """Parse one CLI edit.

    * ``grow`` / ``shrink``: ``K:MM`` (class K by MM millimetres).
    * ``replace``: ``A:B``.
    * ``insert``: ``K:X,Y,Z:R`` or ``K:X,Y,Z:RX,RY,RZ``, optionally ``:P1,P2`` (parent classes to clip to).

    Raises:
        ValueError: malformed text, a class outside 0..label_nc-1, a negative size.
    """
    what = f"--{kind} {text}"
    parts = text.split(":")
    try:
        k = int(parts[0])
    except ValueError:
        raise ValueError(f"{what}: the first field must be a class number") from None
    _check_class(k, label_nc, what)
    if kind in ("grow", "shrink"):
        if len(parts) != 2:
            raise ValueError(f"{what}: expected K:MM")
        mm = _numbers(parts[1], what, (1,))[0]
        if mm <= 0:
            raise ValueError(f"{what}: the distance must be > 0 mm")
        return LabelEdit(kind, text, k, mm=mm)
    if kind == "replace":
        if len(parts) != 2:
            raise ValueError(f"{what}: expected A:B")
        b = _numbers(parts[1], what, (1,), int)[0]
        _check_class(b, label_nc, what)
        return LabelEdit(kind, text, k, b=b)
    if kind == "insert":
        if len(parts) not in (3, 4):
            raise ValueError(f"{what}: expected K:X,Y,Z:R[:PARENTS]")
        centre = _numbers(parts[1], what, (3,))
        radii = _numbers(parts[2], what, (1, 3))
        if min(radii) <= 0:
            raise ValueError(f"{what}: radii must be > 0 mm")
        parent = _numbers(parts[3], what, tuple(range(1, 257)), int) if len(parts) == 4 else None
        for p in parent or ():
            _check_class(p, label_nc, what)
        return LabelEdit(kind, text, k, centre=centre, radii=radii, parent=parent)
    raise ValueError(f"unknown edit kind {kind!r}")
