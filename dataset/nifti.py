"""NIfTI reading and writing with the checks every loader, generation and evaluation rely on.

Axis convention: a NIfTI file stores its voxels as (I, J, K). On load they are permuted to
(K, I, J) = (D, H, W) so that K (the slice axis of axial data) becomes depth D. The returned ``affine`` is
always the NIfTI affine of the *stored* (I, J, K) array, so :func:`save_nifti` can write a (D, H, W) array back
with that affine unchanged. :func:`shift_affine` gives the affine of a sub-block cut at a (D, H, W) offset.

Every problem with a file raises :class:`dataset.DataError` whose message starts with the file's path.

Before any voxel is read, :func:`dataset.nifti_size.check_declared_size` refuses a header that declares more
voxels than the file can hold or than the voxel limit allows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.openers import gzip_open
from nibabel.volumeutils import array_to_file

from dataset.contract import DataError, Sample, check_label_range
from dataset.files import atomic_write
from dataset.nifti_size import check_declared_size

log = logging.getLogger(__name__)

#: Default absolute tolerance (mm, and unitless for the rotation part) when comparing image and label affines.
AFFINE_ATOL = 1e-3

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str:
    """Return a file name without its ``.nii.gz`` / ``.nii`` suffix (``"a_0001.nii.gz"`` -> ``"a_0001"``)."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def ijk_to_dhw(array: np.ndarray) -> np.ndarray:
    """Permute a stored NIfTI array (I, J, K[, ...]) to (K, I, J[, ...]) = (D, H, W[, ...])."""
    axes = (2, 0, 1, *range(3, array.ndim))
    return np.ascontiguousarray(np.transpose(array, axes))


def dhw_to_ijk(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ijk_to_dhw`: (D, H, W[, ...]) -> (I, J, K[, ...]) = (H, W, D[, ...])."""
    axes = (1, 2, 0, *range(3, array.ndim))
    return np.ascontiguousarray(np.transpose(array, axes))


def shift_affine(affine: np.ndarray, offset_dhw: tuple[int, int, int] | list[int]) -> np.ndarray:
    """Affine of a block whose voxel (0, 0, 0) is voxel ``offset_dhw`` of the source array.

    Args:
        affine: (4, 4) NIfTI affine of the source (I, J, K) array.
        offset_dhw: block start in the source's (D, H, W) index space; may be negative (padded blocks).

    Returns:
        (4, 4) float64 affine such that the world coordinate of block voxel (d, h, w) equals that of source
        voxel (d + od, h + oh, w + ow).
    """
    d0, h0, w0 = (int(v) for v in offset_dhw)
    out = np.array(affine, dtype=np.float64, copy=True)
    # (D, H, W) = (K, I, J): the I, J, K index shift is (h0, w0, d0).
    out[:3, 3] = out[:3, :3] @ np.array([h0, w0, d0], dtype=np.float64) + out[:3, 3]
    return out


def voxel_size_dhw(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along (D, H, W), i.e. the lengths of the affine's K, I, J columns."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)  # (I, J, K)
    return float(norms[2]), float(norms[0]), float(norms[1])


def load_header(path: str | Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI file without reading its voxels, after :func:`check_declared_size`.

    Returns:
        The nibabel image (header, affine, lazy ``dataobj``).

    Raises:
        DataError: missing, unreadable or not NIfTI; declared size too large or not matching the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for unreadable files
        raise DataError(f"{path}: cannot read NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    check_declared_size(path, img)
    return img


def read_nifti(path: str | Path, allow_4d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file's voxels in stored (I, J, K) order and its affine.

    Trailing singleton dimensions beyond the third (e.g. ``(I, J, K, 1)``) are dropped: that is lossless.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        allow_4d: accept a genuinely 4-D file (I, J, K, S), e.g. a multi-segment segmentation. Loaders of
            ordinary volumes leave this False so a 4-D file is reported instead of being misread.

    Returns:
        ``(array, affine)``: array (I, J, K) or (I, J, K, S) in the file's data type (scaling applied),
        affine (4, 4) float64.

    Raises:
        DataError: missing, unreadable or corrupt file; declared size too large or not matching the file
            (:func:`check_declared_size`, checked before the voxels are read); wrong number of dimensions;
            invalid affine.
    """
    path = Path(path)
    img = load_header(path)
    try:
        # Reading the data here (not lazily later) surfaces truncated or corrupt gzip streams now.
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, OSError, ...)
        raise DataError(f"{path}: cannot read NIfTI file ({type(err).__name__}: {err})") from err
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim < 3 or array.ndim > 4 or (array.ndim == 4 and not allow_4d):
        raise DataError(
            f"{path}: expected a 3-D volume, got shape {array.shape}"
            + (" (a 4-D file: multi-channel or multi-segment data is not accepted here)" if array.ndim == 4 else "")
        )
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: invalid affine {affine.tolist()}")
    return array, affine


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an intensity volume.

    Returns:
        ``(image, affine)``: image (D, H, W) float32 in the file's units (e.g. HU), affine (4, 4) of the
        stored (I, J, K) array.

    Raises:
        DataError: see :func:`read_nifti`; NaN or Inf voxels.
    """
    array, affine = read_nifti(path)
    image = array.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{path}: image holds {bad} NaN/Inf voxels")
    return ijk_to_dhw(image), affine


def check_integer_labels(array: np.ndarray, source: str) -> None:
    """Raise :class:`DataError` unless ``array`` holds integer class ids (integer dtype, or integral floats).

    Args:
        array: label voxels, any shape and numeric dtype.
        source: file name quoted in errors.
    """
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{source}: label map holds NaN/Inf values")
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{source}: label map holds non-integer values; expected integer class ids")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DataError(f"{source}: label map has unsupported data type {array.dtype}")


def label_array_to_int(array: np.ndarray, source: str, compact: bool = False) -> np.ndarray:
    """Convert a label array to int64, refusing non-integer or non-finite values (:func:`check_integer_labels`).

    ``compact``: the smallest of int16 / int32 / int64 that holds the values instead (a 1024^3 map is 2 GiB as
    int16, 8 GiB as int64); for callers that widen only a window at a time.
    """
    check_integer_labels(array, source)
    if compact and array.size:
        lo, hi = float(array.min()), float(array.max())
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype, copy=False)
    return array.astype(np.int64)


def label_value_range(path: str | Path) -> tuple[int, int]:
    """Smallest and largest value of a label file (``(0, 0)`` when empty), without an int64 copy.

    Raises:
        DataError: see :func:`read_nifti`; non-integer or non-finite values.
    """
    array, _ = read_nifti(path)
    check_integer_labels(array, str(path))
    if array.size == 0:
        return 0, 0
    return int(array.min()), int(array.max())


def label_values(path: str | Path) -> list[int]:
    """The distinct values of a label file, ascending (what a label table must list).

    Raises:
        DataError: see :func:`read_nifti`; non-integer or non-finite values.
    """
    array, _ = read_nifti(path)
    check_integer_labels(array, str(path))
    if array.size == 0:
        return []
    lo, hi = int(array.min()), int(array.max())
    if np.issubdtype(array.dtype, np.integer) and hi - lo < 1 << 20:  # a histogram is linear time, unique sorts
        counts = np.bincount((array.ravel() - lo).astype(np.int64, copy=False), minlength=hi - lo + 1)
        return [int(v) + lo for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(array)]


def load_label(path: str | Path, label_nc: int | None = None, compact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load an integer label map.

    Args:
        path: NIfTI file.
        label_nc: when given, every value must lie in ``[0, label_nc)``. Leave None for raw source labels
            that are remapped afterwards (the remapping table then checks them).
        compact: keep the smallest integer type that holds the values (:func:`label_array_to_int`).

    Returns:
        ``(label, affine)``: label (D, H, W) int64 (``compact``: int16/int32/int64), affine (4, 4).

    Raises:
        DataError: see :func:`read_nifti`; non-integer, non-finite or out-of-range values.
    """
    array, affine = read_nifti(path)
    label = label_array_to_int(array, str(path), compact)
    if label_nc is not None:
        check_label_range(torch.from_numpy(label), label_nc, str(path))
    return ijk_to_dhw(label), affine


def check_same_geometry(
    path_a: str | Path,
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    path_b: str | Path,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
    affine_atol: float = AFFINE_ATOL,
) -> None:
    """Raise :class:`DataError` (naming ``path_b``) unless two volumes share their grid.

    Args:
        path_a, shape_a, affine_a: reference volume (shape in any consistent axis order).
        path_b, shape_b, affine_b: volume that must match it.
        affine_atol: largest allowed absolute difference of any affine entry.
    """
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(f"{path_b}: shape {tuple(shape_b)} differs from {path_a} shape {tuple(shape_a)}")
    diff = float(np.abs(np.asarray(affine_a) - np.asarray(affine_b)).max())
    if diff > affine_atol:
        raise DataError(
            f"{path_b}: affine differs from {path_a} by up to {diff:.4g} (tolerance {affine_atol}); "
            "image and label must share one voxel grid"
        )


def load_pair(
    image_path: str | Path,
    label_path: str | Path,
    label_nc: int | None,
    affine_atol: float = AFFINE_ATOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load an image and its label map and check that they belong together.

    Args:
        image_path: intensity NIfTI.
        label_path: label NIfTI on the same grid.
        label_nc: label values must lie in ``[0, label_nc)``; None skips the range check (raw source labels).
        affine_atol: tolerance of the affine comparison.

    Returns:
        ``(image, label, affine)``: image (D, H, W) float32, label (D, H, W) int64, affine (4, 4) of the image.

    Raises:
        DataError: a missing partner, anything :func:`load_image`/:func:`load_label` rejects, or a shape or
            affine mismatch between the two files.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    if not image_path.is_file():
        raise DataError(f"{image_path}: image partner of label {label_path} not found")
    if not label_path.is_file():
        raise DataError(f"{label_path}: label partner of image {image_path} not found")
    image, affine = load_image(image_path)
    label, label_affine = load_label(label_path, label_nc)
    check_same_geometry(image_path, image.shape, affine, label_path, label.shape, label_affine, affine_atol)
    return image, label, affine


def make_sample(image: np.ndarray, label: np.ndarray, affine: np.ndarray, sample_id: str) -> Sample:
    """Pack (D, H, W) numpy arrays into the sample contract (adds the channel axis, sets dtypes)."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
        "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None],
        "affine": torch.as_tensor(np.asarray(affine, dtype=np.float64)),
        "id": str(sample_id),
    }


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _default_dtype(array: np.ndarray) -> np.dtype:
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def save_nifti(
    path: str | Path,
    array: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    overwrite: bool = False,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write a (D, H, W) volume as NIfTI (I, J, K) with the given affine, atomically.

    The header carries geometry only (fresh header: sform and qform from ``affine`` with code 1 "scanner",
    units mm; no description, aux file or intent), so nothing from an input file leaks into outputs. The file
    is written with :func:`dataset.files.atomic_write` (hidden temporary file in the target folder, fsync,
    rename), so a reader or a kill never leaves a half-written volume.

    Args:
        path: destination ending in ``.nii.gz`` or ``.nii``; parent folders are created.
        array: (D, H, W) or (1, D, H, W) array or tensor.
        affine: (4, 4) affine of the (I, J, K) array, e.g. the ``affine`` of a loaded sample.
        overwrite: replace an existing file; without it an existing file raises ``FileExistsError``.
        dtype: on-disk data type; default float32 for floating arrays and the smallest of
            uint8/int16/int32 holding the values for integer arrays.

    Returns:
        The written path.

    Raises:
        ValueError: bad shape, affine or suffix. FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: NIfTI output must end in .nii.gz or .nii")
    data = _as_numpy(array)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a (D, H, W) or (1, D, H, W) array, got shape {data.shape}")
    aff = _as_numpy(affine).astype(np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"{path}: affine must be a finite (4, 4) matrix, got {aff.tolist()}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")

    out_dtype = np.dtype(dtype) if dtype is not None else _default_dtype(data)
    img = nib.Nifti1Image(dhw_to_ijk(data).astype(out_dtype, copy=False), aff)  # fresh header
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    img.header.set_xyzt_units("mm")

    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite, suffix=suffix)


@dataclass(frozen=True)
class StoredVolume:
    """A volume exactly as its file stores it, for outputs that must keep the input's voxels bit for bit.

    Attributes:
        stored: (D, H, W) array in the file's on-disk dtype, before scaling.
        slope, inter: the file's scaling (value = stored * slope + inter; 1 and 0 when it has none).
        affine: (4, 4) affine of the stored (I, J, K) array.
    """

    stored: np.ndarray
    slope: float
    inter: float
    affine: np.ndarray

    @property
    def values(self) -> np.ndarray:
        """(D, H, W) float32 values in the file's units (scaling applied)."""
        if self.slope == 1.0 and self.inter == 0.0:
            return self.stored.astype(np.float32)
        return (self.stored.astype(np.float64) * self.slope + self.inter).astype(np.float32)


def read_stored(path: str | Path) -> StoredVolume:
    """Read a 3-D NIfTI volume as stored (dtype and scaling kept; checks as :func:`read_nifti`).

    Raises:
        DataError: see :func:`read_nifti`; NaN or Inf voxels.
    """
    path = Path(path)
    _, affine = read_nifti(path)  # every check (size, dimensions, affine) and a full read of the data
    proxy = load_header(path).dataobj
    try:
        stored = np.asarray(proxy.get_unscaled())
    except Exception as err:
        raise DataError(f"{path}: cannot read NIfTI file ({type(err).__name__}: {err})") from err
    while stored.ndim > 3 and stored.shape[-1] == 1:
        stored = stored[..., 0]
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if not (math.isfinite(slope) and math.isfinite(inter)) or slope == 0.0:
        slope, inter = 1.0, 0.0  # NIfTI: a zero or missing slope means no scaling
    vol = StoredVolume(ijk_to_dhw(stored), slope, inter, affine)
    if np.issubdtype(stored.dtype, np.floating) and not np.isfinite(stored).all():
        raise DataError(f"{path}: image holds {int((~np.isfinite(stored)).sum())} NaN/Inf voxels")
    return vol


def save_stored(path: str | Path, stored: np.ndarray, like: StoredVolume, overwrite: bool = False) -> Path:
    """Write a (D, H, W) array in ``like``'s stored dtype and scaling, with ``like``'s affine, atomically.

    The header carries geometry and the scaling only (as :func:`save_nifti`); the voxels are written as given, so
    stored values copied from ``like`` come out bit for bit.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: NIfTI output must end in .nii.gz or .nii")
    if stored.dtype != like.stored.dtype or stored.shape != like.stored.shape:
        want, got = f"{like.stored.dtype} {like.stored.shape}", f"{stored.dtype} {stored.shape}"
        raise ValueError(f"{path}: expected {want}, got {got}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    data = dhw_to_ijk(stored)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    aff = np.asarray(like.affine, dtype=np.float64)
    hdr.set_sform(aff, code=1)
    hdr.set_qform(aff, code=1)
    hdr.set_xyzt_units("mm")
    if (like.slope, like.inter) != (1.0, 0.0):
        hdr.set_slope_inter(like.slope, like.inter)
    offset = 352  # single-file NIfTI-1: 348-byte header + 4-byte extension flag
    hdr["vox_offset"] = offset

    def write(tmp: Path) -> None:
        # nibabel's Nifti1Image.to_file_map would recompute the scaling: write as is. nibabel's gzip_open writes
        # deterministically (no file name, ours being a random temporary one, and mtime 0), so the same volume
        # always gives the same bytes.
        opener = gzip_open if tmp.name.endswith(".gz") else open
        with opener(str(tmp), "wb") as fh:
            hdr.write_to(fh)
            fh.write(b"\0" * (offset - fh.tell()))
            array_to_file(data, fh, data.dtype, offset=offset, order="F")

    suffix = next(s for s in NIFTI_SUFFIXES if path.name.endswith(s))
    return atomic_write(path, write, overwrite=overwrite, suffix=suffix)
