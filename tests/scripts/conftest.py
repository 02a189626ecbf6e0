"""Fixtures of the generation CLI tests: a tiny trained checkpoint (built once) and label maps on oblique grids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.dataset.fakes import PRIVATE_HEADER, oblique_affine, write_nifti

#: Rotation of the label maps' grids (any oblique one: the tests compare outputs with their inputs).
DEGREES = (20.0, -11.5, 34.5)


def label_affine(voxel_ijk: tuple[float, float, float], origin=(12.5, -40.0, 7.25)) -> np.ndarray:
    """An oblique affine of the label-map fixtures whose I, J, K columns have lengths ``voxel_ijk``."""
    return oblique_affine(voxel_ijk, origin, DEGREES)


def nested_labels(shape_ijk: tuple[int, ...], label_nc: int = 4) -> np.ndarray:
    """Nested, off-centre ellipsoids of classes 1..label_nc-1 on background 0 (every class present)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_ijk], indexing="ij"))
    centre = np.array([0.1, -0.15, 0.05])[:, None, None, None]
    dist = np.sqrt((((grid - centre) / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(shape_ijk, dtype=np.int16)
    for k in range(1, label_nc):
        label[dist <= 1.0 - (k - 1) / label_nc] = k
    return label


@pytest.fixture
def write_label() -> Callable[..., Path]:
    """``write_label(path, array, affine=..., header=...)`` for tests that need their own (bad) label files."""

    def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None, header: dict = PRIVATE_HEADER) -> Path:
        return write_nifti(path, array, label_affine((1.5, 1.5, 2.0)) if affine is None else affine, header=header)

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
    large = write_nifti(folder / "large_oblique.nii.gz", nested_labels((23, 41, 37)), label_affine((1.5, 1.5, 2.0)))
    small = write_nifti(
        folder / "small_oblique.nii.gz",
        nested_labels((11, 13, 7)),
        label_affine((1.5, 1.5, 2.0), (-3.0, 5.5, 100.0)),
    )
    aniso = write_nifti(
        folder / "aniso_oblique.nii",  # uncompressed .nii is accepted too
        nested_labels((9, 30, 13)),
        label_affine((1.5, 0.8, 2.0), (0.0, 0.0, -17.0)),
    )
    (folder / "notes.txt").write_text("not a label map; --labels FOLDER must skip it\n")
    return LabelMaps(folder, large, small, aniso)
