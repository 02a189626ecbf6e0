"""Shared helpers for the evaluation tests: tiny seeded volumes written as real NIfTI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset.nifti import save_nifti
from dataset.synthetic import SyntheticPhantomDataset
from tests.dataset.fakes import write_nifti as write_ijk

# Oblique, anisotropic, translated: catches any code that assumes an identity or diagonal affine.
AFFINE = np.array(
    [
        [0.0, -1.2, 0.1, 90.0],
        [0.9, 0.0, 0.0, -120.5],
        [0.0, 0.05, 2.5, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_nifti(path: Path, volume_dhw: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Write a (D, H, W) array as NIfTI in the stored (I, J, K) = (H, W, D) order the loaders expect."""
    return write_ijk(path, np.transpose(volume_dhw, (1, 2, 0)), affine)


def smooth_volume(seed: int, shape: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """Seeded float32 volume in [-1, 1] with blob structure (so SSIM/features see more than white noise)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in shape], indexing="ij")
    vol = np.zeros(shape)
    for _ in range(4):
        centre, width, amp = rng.uniform(-0.7, 0.7, 3), rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
        vol += amp * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * width**2))
    vol += 0.05 * rng.standard_normal(shape)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return (2.0 * vol - 1.0).astype(np.float32)


@pytest.fixture
def nifti():
    """The :func:`write_nifti` helper."""
    return write_nifti


@pytest.fixture
def volume():
    """The :func:`smooth_volume` helper."""
    return smooth_volume


@pytest.fixture
def affine():
    """The non-identity affine :func:`write_nifti` uses by default."""
    return AFFINE.copy()


def export_phantoms(split: str, folder: Path, n: int, suffix: str = "", seed: int = 0) -> None:
    """``n`` 8^3 synthetic phantoms (4 classes) as ``folder/images/<id><suffix>.nii.gz`` + ``folder/labels/<id>``."""
    ds = SyntheticPhantomDataset(split=split, num_samples=n, size=(8, 8, 8), label_nc=4, seed=seed)
    for i in range(n):
        s = ds[i]
        save_nifti(folder / "images" / f"{s['id']}{suffix}.nii.gz", s["image"], s["affine"])
        save_nifti(folder / "labels" / f"{s['id']}.nii.gz", s["label"], s["affine"])
