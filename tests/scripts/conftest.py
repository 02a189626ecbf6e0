"""Fixtures of the generation CLI tests: a tiny trained checkpoint (built once) and label maps on oblique grids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.tiny_checkpoints import TinyModel  # noqa: F401  (re-exported for the tests that import it from here)

#: Header fields that an input may carry and an output must not inherit.
LEAKY_HEADER = {"descrip": b"patient 0815 (private)", "aux_file": b"private.lut", "intent_name": b"labels"}


def oblique_affine(voxel_ijk: tuple[float, float, float], translation=(12.5, -40.0, 7.25)) -> np.ndarray:
    """A rotated (about all three axes), translated affine whose I, J, K columns have lengths ``voxel_ijk``."""
    ax, ay, az = 0.35, -0.2, 0.6
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(voxel_ijk)
    affine[:3, 3] = translation
    return affine


def nested_labels(shape_ijk: tuple[int, ...], label_nc: int = 4) -> np.ndarray:
    """Nested, off-centre ellipsoids of classes 1..label_nc-1 on background 0 (every class present)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_ijk], indexing="ij"))
    centre = np.array([0.1, -0.15, 0.05])[:, None, None, None]
    dist = np.sqrt((((grid - centre) / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(shape_ijk, dtype=np.int16)
    for k in range(1, label_nc):
        label[dist <= 1.0 - (k - 1) / label_nc] = k
    return label


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, header: dict | None = None) -> Path:
    """Write a stored (I, J, K[, ...]) array with nibabel, setting extra header fields."""
    img = nib.Nifti1Image(array, affine)
    for key, value in (header or {}).items():
        img.header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture
def write_label() -> Callable[..., Path]:
    """``write_label(path, array, affine=..., header=...)`` for tests that need their own (bad) label files."""

    def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None, header: dict | None = None) -> Path:
        return write_nifti(path, array, oblique_affine((1.5, 1.5, 2.0)) if affine is None else affine, header)

    return _write


@dataclass(frozen=True)
class LabelMaps:
    """The label-map folder (plus a non-NIfTI file that must be ignored) and each map's path."""

    folder: Path
    large: Path  # 23x41x37, training voxel size, oblique: larger than the 16^3 block on every axis (windowed)
    small: Path  # 11x13x7, training voxel size, oblique: smaller than the block on every axis (padded)
    aniso: Path  # 9x30x13 at 1.5x0.8x2.0 mm, oblique: another voxel size (resampled, then back)


@pytest.fixture(scope="session")
def label_maps(tmp_path_factory: pytest.TempPathFactory) -> LabelMaps:
    folder = tmp_path_factory.mktemp("labels")
    # Training voxel (D, H, W) = (2.0, 1.5, 1.5) mm is (I, J, K) = (1.5, 1.5, 2.0) in the stored array.
    large = write_nifti(
        folder / "large_oblique.nii.gz", nested_labels((23, 41, 37)), oblique_affine((1.5, 1.5, 2.0)), LEAKY_HEADER
    )
    small = write_nifti(
        folder / "small_oblique.nii.gz",
        nested_labels((11, 13, 7)),
        oblique_affine((1.5, 1.5, 2.0), (-3.0, 5.5, 100.0)),
        LEAKY_HEADER,
    )
    aniso = write_nifti(
        folder / "aniso_oblique.nii",  # uncompressed .nii is accepted too
        nested_labels((9, 30, 13)),
        oblique_affine((1.5, 0.8, 2.0), (0.0, 0.0, -17.0)),
        LEAKY_HEADER,
    )
    (folder / "notes.txt").write_text("not a label map; --labels FOLDER must skip it\n")
    return LabelMaps(folder, large, small, aniso)
