"""A user's own data folder as a new user has it: raw CT in HU, odd sizes, anisotropic voxels, flat layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.dataset.fakes import body_case, write_nifti

#: NIfTI (I, J, K) voxel size of every case: anisotropic, thick slices.
ZOOMS = (0.9, 1.3, 2.5)
#: (I, J, K) shapes cycled through the cases: odd, none divisible by 8.
SHAPES = ((14, 13, 11), (15, 12, 11), (13, 13, 9), (14, 11, 10))


def write_own_ct_folder(root: Path, n_cases: int = 10, seed: int = 0, lps: bool = False) -> list[str]:
    """Write ``root/images/<id>.nii.gz`` (int16 HU, air -1024, bone 1500) + ``root/labels/<id>.nii.gz`` (0-3).

    Args:
        root: data folder to create.
        n_cases: pairs to write (10: a seeded 8 / 1 / 1 split).
        seed: noise and blob positions.
        lps: store in LPS orientation (the first two axes flipped in the affine) instead of RAS.

    Returns:
        The case ids.
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = (-30.0, 12.5, 40.0)
    if lps:
        affine[0, 0], affine[1, 1] = -ZOOMS[0], -ZOOMS[1]
    ids = []
    for i in range(n_cases):
        sid = f"case{i:02d}"
        hu, label = body_case(rng, shape=SHAPES[i % len(SHAPES)])
        write_nifti(root / "images" / f"{sid}.nii.gz", hu.round(), affine, dtype=np.int16)
        write_nifti(root / "labels" / f"{sid}.nii.gz", label, affine, dtype=np.uint8)
        ids.append(sid)
    return ids


#: Sparse, TotalSegmentator-like label values (from ids 0-117) that the classes 0-3 of
#: :func:`write_own_ct_folder` are stored as by :func:`write_sparse_ct_folder`.
SPARSE_IDS = (0, 5, 51, 117)
#: The names a TotalSegmentator run would give them.
SPARSE_NAMES = {5: "liver", 51: "heart", 117: "costal_cartilages"}


def write_sparse_ct_folder(root: Path, n_cases: int = 4, seed: int = 0, masks_of: str | None = None) -> list[str]:
    """:func:`write_own_ct_folder` with label values 0-3 stored as :data:`SPARSE_IDS` (ids from 0-117).

    Args:
        root: data folder to create.
        n_cases: pairs to write.
        seed: as :func:`write_own_ct_folder`.
        masks_of: a case id whose one-file-per-class masks (TotalSegmentator's ``segmentations/<name>.nii.gz``,
            binary) are also written, to ``root/<case>/segmentations/``.

    Returns:
        The case ids.
    """
    import nibabel as nib

    ids = write_own_ct_folder(root, n_cases=n_cases, seed=seed)
    lut = np.array(SPARSE_IDS, dtype=np.uint8)
    for sid in ids:
        path = root / "labels" / f"{sid}.nii.gz"
        img = nib.load(str(path))
        classes = np.asarray(img.dataobj).astype(np.int64)
        write_nifti(path, lut[classes], img.affine, dtype=np.uint8)
        if sid == masks_of:
            for k, value in enumerate(SPARSE_IDS[1:], start=1):
                mask = (classes == k).astype(np.uint8)
                write_nifti(root / sid / "segmentations" / f"{SPARSE_NAMES[value]}.nii.gz", mask, img.affine)
    return ids
