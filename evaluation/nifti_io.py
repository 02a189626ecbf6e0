"""NIfTI listing and header checks for evaluation (output rules: ``report.report_paths``, ``cli_common``).

Voxel data is read with :mod:`dataset.nifti` (``load_image`` / ``load_label`` / ``load_pair``: stored (I, J, K)
arrays permuted to (K, I, J) = (D, H, W), affine of the stored array, :class:`dataset.DataError` naming the
file). This module adds what evaluation needs on top: listing a folder by case id, and comparing grids from
headers alone, so a whole evaluation is checked before any voxel is read.

The module is named ``nifti_io`` rather than ``io`` so that running ``python evaluation/<cli>.py`` (which puts
``evaluation/`` first on ``sys.path``) can never shadow the standard library's ``io``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import DataError

# The one atomic-write helper lives in dataset.files; these names stay importable from here for the CLIs.
from dataset.files import atomic_torch_save as atomic_torch_save
from dataset.files import atomic_write as atomic_write
from dataset.files import atomic_write_text as atomic_write_text
from dataset.nifti import NIFTI_SUFFIXES, check_same_geometry, load_header, strip_nifti_suffix


@dataclass(frozen=True)
class Header:
    """Geometry of a NIfTI file, read without loading its voxels.

    Attributes:
        path: the file.
        shape: (D, H, W) after the project's permutation.
        affine: (4, 4) voxel-to-world matrix of the stored (I, J, K) array.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray


def list_nifti(folder: Path) -> dict[str, Path]:
    """Map stem → path for every NIfTI file directly inside ``folder`` (sorted by stem, hidden files skipped).

    Raises:
        ValueError: ``folder`` is missing, not a folder, or holds no NIfTI file.
        DataError: two files share a stem (``a.nii`` and ``a.nii.gz``): which one is meant is ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not path.name.endswith(NIFTI_SUFFIXES) or path.name.startswith("."):
            continue
        stem = strip_nifti_suffix(path.name)
        if stem in found:
            raise DataError(f"{path}: same name as {found[stem]} (only the suffix differs); keep one of them")
        found[stem] = path
    if not found:
        raise ValueError(f"{folder}: holds no {' or '.join(NIFTI_SUFFIXES)} file")
    return dict(sorted(found.items()))


def read_header(path: Path) -> Header:
    """Shape as (D, H, W) and affine of a NIfTI file, from its header only.

    Raises:
        DataError: unreadable, not NIfTI, a declared size the file cannot hold or above the voxel limit
            (:func:`dataset.nifti_size.check_declared_size`), or not a 3D volume (a trailing singleton 4th axis is
            allowed).
    """
    path = Path(path)
    img = load_header(path)
    shape = img.shape
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise DataError(f"{path}: expected a 3-D volume, got shape {tuple(shape)}")
    i, j, k = (int(s) for s in shape[:3])
    return Header(path=path, shape=(k, i, j), affine=np.asarray(img.affine, dtype=np.float64))


def check_same_grid(a: Header, b: Header) -> None:
    """Raise DataError naming ``b`` unless it shares shape and affine with ``a`` (voxel-wise metrics need it)."""
    check_same_geometry(a.path, a.shape, a.affine, b.path, b.shape, b.affine)


# Output rules (report paths, output checks) live in evaluation.report.report_paths and
# evaluation.cli_common.check_output_files.
