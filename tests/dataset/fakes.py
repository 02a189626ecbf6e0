"""Tiny fake raw datasets written with nibabel directly (so the loaders are tested against an independent writer).

All volumes use oblique, non-isotropic affines and odd shapes, in each dataset's real raw layout.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: Header fields an input file carries that no output may inherit (every file written here has them).
PRIVATE_HEADER = {"descrip": b"patient 0815 (private)", "aux_file": b"private.lut", "intent_name": b"labels"}


def oblique_affine(
    zooms: tuple[float, float, float] = (0.9, 1.3, 2.5),
    origin: tuple[float, float, float] = (-20.5, 14.25, 31.0),
    degrees: tuple[float, float, float] = (12.0, -7.0, 25.0),
) -> np.ndarray:
    """A voxel-to-world affine rotated about all three axes, whose I, J, K columns have lengths ``zooms``."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


AFFINE = oblique_affine()


def write_nifti(
    path: Path,
    array_ijk: np.ndarray,
    affine: np.ndarray = AFFINE,
    dtype: type | None = None,
    header: dict[str, bytes] = PRIVATE_HEADER,
) -> Path:
    """Write an (I, J, K[, S]) array with nibabel (independent of dataset.nifti.save_nifti), ``header`` fields set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array_ijk.astype(dtype) if dtype is not None else array_ijk
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Boolean ellipsoid in an (I, J, K) grid."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    c = np.array(centre)[:, None, None, None]
    r = np.array(radii)[:, None, None, None]
    return (((grid - c) / r) ** 2).sum(0) <= 1.0


def body_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (14, 13, 11), values: tuple[int, ...] = (1, 2, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (I, J, K) volume in HU and a label map using ``values`` (nested blobs inside a body).

    HU: air -1024 outside, soft tissue ~40 in the body, 150 per class step, bone 1500 in a corner of the body
    (outside the default [-1000, 1000] window, to exercise the documented clipping).
    """
    body = ellipsoid(shape, [(n - 1) / 2 + rng.uniform(-0.5, 0.5) for n in shape], [n * 0.45 for n in shape])
    label = np.zeros(shape, dtype=np.int16)
    hu = np.full(shape, -1024.0)
    hu[body] = 40.0
    for step, value in enumerate(values, start=1):
        blob = ellipsoid(
            shape, [(n - 1) / 2 + rng.uniform(-1, 1) for n in shape], [n * (0.42 - 0.1 * step) for n in shape]
        )
        region = blob & body
        label[region] = value
        hu[region] = 40.0 + 150.0 * step
    hu[body & (np.indices(shape)[0] < 3)] = 1500.0
    hu += rng.normal(0, 5, shape)
    return hu.astype(np.float32), label


def write_autopet_raw(root: Path, n_patients: int = 4, seed: int = 0, studies_per_patient: int = 1) -> list[str]:
    """``root/imagesTr/<case>_0001.nii.gz`` (CT) + ``<case>_0002.nii.gz`` (labels 0-36).

    Cases are named as AutoPET's nnU-Net export names them: ``PETCT_<patient hash>_<study index>``.
    """
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n_patients):
        for study in range(studies_per_patient):
            case = f"PETCT_{i:04x}ab_{study}"
            hu, label = body_case(rng, values=(3, 17, 36))
            write_nifti(root / "imagesTr" / f"{case}_0001.nii.gz", hu.round(), dtype=np.int16)
            write_nifti(root / "imagesTr" / f"{case}_0002.nii.gz", label, dtype=np.uint8)
            ids.append(case)
    return ids


def write_synthrad_raw(src: Path, labels: Path, n_patients: int = 4, seed: int = 1) -> list[str]:
    """``src/<patient>/{mr,ct,mask}.nii.gz`` + ``labels/<patient>_ct_label.nii.gz`` (labels 0-30)."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n_patients):
        pid = f"1PA{i:03d}"
        hu, label = body_case(rng, shape=(13, 15, 9), values=(22, 26, 30))
        mr = np.where(label > 0, 300.0 + 40.0 * label, np.where(hu > -500, 120.0, 3.0)) + rng.gamma(2.0, 3.0, hu.shape)
        write_nifti(src / pid / "mr.nii.gz", mr.astype(np.float32))
        write_nifti(src / pid / "ct.nii.gz", hu.round(), dtype=np.int16)
        write_nifti(src / pid / "mask.nii.gz", (hu > -500).astype(np.uint8))
        write_nifti(labels / f"{pid}_ct_label.nii.gz", label, dtype=np.uint8)
        ids.append(pid)
    (src / "overview").mkdir(parents=True, exist_ok=True)
    (src / "overview" / "1_pelvis_train.xlsx").write_bytes(b"not a volume")
    return ids


def duke_segments(
    rng: np.random.Generator, shape: tuple[int, int, int] = (16, 12, 10)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MR (I, J, K), breast mask, dense-tissue mask and vessel mask (vessels partly overlap dense tissue)."""
    breast = ellipsoid(shape, [(n - 1) / 2 for n in shape], [n * 0.45 for n in shape])
    dense = ellipsoid(shape, [(n - 1) / 2 + 1 for n in shape], [n * 0.25 for n in shape]) & breast
    vessels = np.zeros(shape, dtype=bool)
    vessels[shape[0] // 2 - 1 : shape[0] // 2 + 1, 2:-2, shape[2] // 2] = True
    vessels &= breast
    mr = np.where(breast, 200.0, 5.0) + 150.0 * dense + 300.0 * vessels + rng.normal(0, 3, shape)
    return mr.astype(np.float32), breast, dense, vessels


def write_duke_raw(root: Path, n_patients: int = 3, four_d: bool = True, seed: int = 2) -> list[str]:
    """``root/<patient>/{mr,breast,dense_and_vessels}.nii.gz``; dense/vessels as 4-D layers or a 3-D label map."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n_patients):
        pid = f"Breast_MRI_{i:03d}"
        mr, breast, dense, vessels = duke_segments(rng)
        write_nifti(root / pid / "mr.nii.gz", mr)
        write_nifti(root / pid / "breast.nii.gz", breast.astype(np.uint8))
        if four_d:  # Slicer layers: 0 = dense tissue, 1 = vessels (the shipped table's default)
            seg = np.stack([dense, vessels], axis=-1).astype(np.uint8)
        else:  # 3-D label map: 1 = vessels, 2 = dense tissue (vessels win where they overlap)
            seg = np.where(vessels, 1, np.where(dense, 2, 0)).astype(np.uint8)
        write_nifti(root / pid / "dense_and_vessels.nii.gz", seg)
        ids.append(pid)
    return ids
