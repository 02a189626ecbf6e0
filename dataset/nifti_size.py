"""The declared-size guard of NIfTI reading: a header is checked against the file and a voxel limit first.

:func:`check_declared_size` compares the size the header declares (dimensions x bytes per voxel) with the file and
with a voxel limit before any voxel is read, so a tiny file whose header claims 100000 x 100000 voxels is refused in
one line instead of driving the process out of memory. The limit is :data:`DEFAULT_MAX_VOXELS` (2**30 voxels:
4 GiB as float32, 8 GiB once a label map is int64), overridable with the environment variable
``MEDLSDM_MAX_VOXELS``.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import nibabel as nib

from dataset.contract import DataError

#: Largest number of voxels (all dimensions together) a NIfTI file may declare, unless ``MEDLSDM_MAX_VOXELS``
#: says otherwise. 2**30 holds a 1024 x 1024 x 1024 volume, far above any CT or MR series we read.
DEFAULT_MAX_VOXELS = 2**30
MAX_VOXELS_ENV = "MEDLSDM_MAX_VOXELS"
#: Deflate cannot compress better than 1032:1, so a ``.nii.gz`` of n bytes never decompresses to more than
#: about ``n * GZIP_MAX_RATIO`` bytes; a header declaring more is false or the file is truncated.
GZIP_MAX_RATIO = 1032


def max_voxels() -> int:
    """The voxel limit: ``MEDLSDM_MAX_VOXELS`` if set, else :data:`DEFAULT_MAX_VOXELS`.

    Raises:
        ValueError: the environment variable is not a positive integer.
    """
    raw = os.environ.get(MAX_VOXELS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_VOXELS_ENV}={raw!r} must be a positive integer (a number of voxels)")
    return value


def _gunzipped_size(path: Path, stop: int, chunk: int = 1 << 20) -> int:
    # Count decompressed bytes chunk by chunk (nothing kept), up to `stop`; handles multi-member gzip files.
    total = 0
    with gzip.open(path, "rb") as fh:
        while total < stop and (block := fh.read(chunk)):
            total += len(block)
    return total


def check_declared_size(path: str | Path, img: nib.Nifti1Image | nib.Nifti2Image) -> None:
    """Refuse a NIfTI file whose header declares more voxels than the limit or than the file can hold.

    Only the header is used; nothing the size of the voxel data is allocated. For ``.nii`` the file must hold
    ``vox_offset + voxels * bytes per voxel`` bytes; for ``.nii.gz`` that size must fit the deflate bound
    (:data:`GZIP_MAX_RATIO`) and the gzip trailer's ISIZE (uncompressed size mod 2**32); when the trailer
    disagrees (a multi-member gzip, e.g. bgzip) the decompressed bytes are counted without being kept.

    Raises:
        DataError: one line naming the file, the declared shape and what does not fit.
        ValueError: ``MEDLSDM_MAX_VOXELS`` is not a positive integer.
    """
    path = Path(path)
    header = img.header
    shape = tuple(int(n) for n in header.get_data_shape())
    n_voxels = math.prod(shape)
    dims = "x".join(str(n) for n in shape)
    limit = max_voxels()
    if n_voxels > limit:
        raise DataError(
            f"{path}: header declares {dims} = {n_voxels} voxels, more than the limit of {limit} "
            f"(set {MAX_VOXELS_ENV} to allow larger volumes)"
        )
    dtype = header.get_data_dtype()
    # Where the voxels start: the loaded proxy knows (nibabel resets the header's vox_offset on load); never
    # before the end of the header itself.
    offset = getattr(img.dataobj, "offset", None)
    offset = max(int(offset if offset is not None else header.get_data_offset()), int(header.sizeof_hdr))
    needed = offset + n_voxels * dtype.itemsize
    size = path.stat().st_size
    name = path.name.lower()
    if name.endswith(".gz"):
        if needed > size * GZIP_MAX_RATIO:
            raise DataError(
                f"{path}: header declares {dims} {dtype} voxels ({needed} bytes), more than a {size}-byte gzip "
                "file can hold; the header is false or the file is truncated"
            )
        if needed < 2**32:  # ISIZE is only the size modulo 2**32
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
            if isize < needed and (actual := _gunzipped_size(path, needed)) < needed:
                raise DataError(
                    f"{path}: header declares {dims} {dtype} voxels ({needed} bytes with the header) but the file "
                    f"decompresses to {actual} bytes; the header is false or the file is truncated"
                )
    elif name.endswith(".nii") and size < needed:
        raise DataError(
            f"{path}: header declares {dims} {dtype} voxels ({needed} bytes with the header) but the file has "
            f"{size} bytes; the header is false or the file is truncated"
        )
