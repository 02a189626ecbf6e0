"""The generic NIfTI-pairs dataset (folder and manifest layouts) and the preprocessed-dataset classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.autopet import AutoPETDataset, preprocess_autopet
from dataset.contract import DataError, validate_sample
from dataset.nifti import shift_affine
from dataset.nifti_pairs import NiftiPairsDataset
from dataset.preprocess import PreprocessOptions
from tests.dataset.fakes import AFFINE, write_autopet_raw, write_nifti

CT = {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000}


def _flat(root: Path, n: int = 6, shape: tuple[int, int, int] = (9, 8, 7)) -> list[str]:
    rng = np.random.default_rng(0)
    ids = [f"vol{i}" for i in range(n)]
    for sid in ids:
        write_nifti(root / "images" / f"{sid}.nii.gz", rng.uniform(-1200, 1500, shape).astype(np.float32))
        write_nifti(root / "labels" / f"{sid}.nii.gz", rng.integers(0, 3, shape).astype(np.uint8))
    return ids


def test_flat_folder_splits_are_disjoint_and_samples_conform(tmp_path: Path) -> None:
    ids = _flat(tmp_path)
    splits = {
        s: NiftiPairsDataset(s, tmp_path, label_nc=3, intensity=CT, val_frac=0.2, test_frac=0.2)
        for s in ("train", "val", "test")
    }
    got = {s: {sid for sid, _, _ in ds.items} for s, ds in splits.items()}
    assert not (got["train"] & got["val"]) and not (got["train"] & got["test"]) and not (got["val"] & got["test"])
    assert set().union(*got.values()) == set(ids) and len(got["val"]) == len(got["test"]) == 1
    every = NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT)
    assert len(every) == 6
    sample = every[0]
    validate_sample(sample, 3)
    assert sample["image"].shape == (1, 7, 9, 8) and sample["id"] == "vol0"


def test_block_size_crops_and_pads_with_matching_affine(tmp_path: Path) -> None:
    _flat(tmp_path, n=1)
    ds = NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT, block_size=(10, 4, 8))
    sample = ds[0]
    assert sample["image"].shape == (1, 10, 4, 8)
    start = (-1, 2, 0)  # D: pad 7 -> 10 centred; H: crop 9 -> 4; W: 8 fits
    np.testing.assert_allclose(sample["affine"].numpy(), shift_affine(AFFINE, start), atol=1e-4)
    assert (sample["image"][0, 0] == -1).all() and (sample["label"][0, 0] == 0).all()


def test_raw_images_need_an_intensity_spec(tmp_path: Path) -> None:
    _flat(tmp_path, n=1)
    with pytest.raises(DataError, match="vol0.nii.gz: intensities .* not normalised"):
        NiftiPairsDataset("all", tmp_path, label_nc=3)[0]


def test_label_values_checked_against_label_nc(tmp_path: Path) -> None:
    _flat(tmp_path, n=1)
    with pytest.raises(DataError, match=r"labels/vol0.nii.gz: label values in \[0, 2\] outside \[0, 2\)"):
        NiftiPairsDataset("all", tmp_path, label_nc=2, intensity=CT)  # at construction, before any sample


def test_missing_partner_in_folder(tmp_path: Path) -> None:
    _flat(tmp_path, n=2)
    (tmp_path / "labels" / "vol1.nii.gz").unlink()
    with pytest.raises(DataError, match="labels/vol1.nii.gz: label partner of image"):
        NiftiPairsDataset("all", tmp_path, label_nc=3)
    (tmp_path / "images" / "vol0.nii.gz").unlink()
    (tmp_path / "images" / "vol1.nii.gz").unlink()
    with pytest.raises(DataError, match="images/vol0.nii.gz: image partner of label"):
        NiftiPairsDataset("all", tmp_path, label_nc=3)


def test_split_folders(tmp_path: Path) -> None:
    _flat(tmp_path / "train", n=2)
    _flat(tmp_path / "val", n=1)
    assert len(NiftiPairsDataset("train", tmp_path, label_nc=3, intensity=CT)) == 2
    assert len(NiftiPairsDataset("val", tmp_path, label_nc=3, intensity=CT)) == 1
    assert len(NiftiPairsDataset("test", tmp_path, label_nc=3, intensity=CT)) == 0
    assert len(NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT)) == 3


def _manifest(root: Path, entries: list[dict], **extra) -> Path:
    path = root / "manifest.json"
    path.write_text(json.dumps({"entries": entries, **extra}))
    return path


def test_manifest_layout_and_patient_leakage(tmp_path: Path) -> None:
    _flat(tmp_path / "data", n=3)
    entries = [
        {
            "image": f"data/images/vol{i}.nii.gz",
            "label": f"data/labels/vol{i}.nii.gz",
            "id": f"v{i}",
            "patient": f"p{i}",
            "split": s,
        }
        for i, s in enumerate(["train", "train", "test"])
    ]
    _manifest(tmp_path, entries)
    ds = NiftiPairsDataset("train", tmp_path, label_nc=3, intensity=CT)
    assert [e["patient"] for e in ds.entries] == ["p0", "p1"] and ds[1]["id"] == "v1"
    entries[2]["patient"] = "p0"
    _manifest(tmp_path, entries)
    with pytest.raises(DataError, match="manifest.json: patient 'p0' occurs in splits"):
        NiftiPairsDataset("train", tmp_path, label_nc=3, intensity=CT)
    entries[2]["patient"] = "p2"
    entries[2]["image"] = "data/images/gone.nii.gz"
    _manifest(tmp_path, entries)
    with pytest.raises(DataError, match="gone.nii.gz: file not found"):
        NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT)


def test_manifest_consistency_checks(tmp_path: Path) -> None:
    _manifest(tmp_path, [], dataset="duke", label_nc=4)
    with pytest.raises(DataError, match="expected 'autopet'"):
        NiftiPairsDataset("train", tmp_path, label_nc=4, dataset_name="autopet")
    with pytest.raises(DataError, match="label_nc=4, the config 3"):
        NiftiPairsDataset("train", tmp_path, label_nc=3)
    with pytest.raises(DataError, match="found neither"):
        NiftiPairsDataset("train", tmp_path / "empty", label_nc=3)
    with pytest.raises(ValueError):
        NiftiPairsDataset("training", tmp_path, label_nc=4)


def test_preprocessed_autopet_dataset(tmp_path: Path) -> None:
    write_autopet_raw(tmp_path / "raw", n_patients=3)
    options = PreprocessOptions(
        block_size=(8, 12, 12),
        val_frac=0.3,
        test_frac=0.3,
        progress=False,
        intensity={"kind": "ct_window", "hu_min": -1000, "hu_max": 1000},
    )
    preprocess_autopet(tmp_path / "raw", tmp_path / "out", options)
    spec = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0, "invertible": True}
    train = AutoPETDataset("train", tmp_path / "out", intensity=spec, block_size=[8, 12, 12])
    assert len(train) > 0 and train.class_names[36] == "label_36"
    sample = train[0]
    validate_sample(sample, 37)
    assert sample["image"].dtype == torch.float32 and sample["label"].max() <= 36
    with pytest.raises(DataError, match="normalised with"):
        AutoPETDataset("train", tmp_path / "out", intensity={"kind": "ct_window", "hu_min": -200, "hu_max": 300})
    with pytest.raises(DataError, match="blocks are"):
        AutoPETDataset("train", tmp_path / "out", block_size=[32, 256, 256])
    with pytest.raises(DataError, match="run scripts/preprocess_autopet.py first"):
        AutoPETDataset("train", tmp_path / "raw")
