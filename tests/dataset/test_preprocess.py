"""The shared preprocessing pipeline in-process: padding, skipping, block affines, samplers, resampling, discovery."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from dataset.autopet import discover_autopet
from dataset.contract import DataError
from dataset.duke import discover_duke, merge_segmentations
from dataset.label_table import load_label_table
from dataset.nifti import load_image, load_label, voxel_size_dhw
from dataset.preprocess import Case, PreprocessOptions, preprocess, resample_to_spacing
from dataset.synthrad2023 import discover_synthrad2023
from tests.dataset.fakes import AFFINE, write_autopet_raw, write_duke_raw, write_nifti, write_synthrad_raw

TABLE = load_label_table("autopet")


def _case(root: Path, name: str, hu_ijk: np.ndarray, label_ijk: np.ndarray, patient: str | None = None) -> Case:
    image = write_nifti(root / f"{name}_0001.nii.gz", hu_ijk.astype(np.float32))
    label = write_nifti(root / f"{name}_0002.nii.gz", label_ijk.astype(np.uint8))
    return Case(case_id=name, patient=patient or name, image=image, label=label)


def _options(**kw) -> PreprocessOptions:
    base = dict(
        block_size=(6, 8, 8),
        val_frac=0.0,
        test_frac=0.0,
        progress=False,
        intensity={"kind": "ct_window", "hu_min": -1000, "hu_max": 1000},
    )
    base.update(kw)
    return PreprocessOptions(**base)


def test_small_volume_is_padded_not_dropped_and_affine_follows(tmp_path: Path) -> None:
    hu = np.full((5, 7, 3), 200.0)  # (I, J, K) -> (D, H, W) = (3, 5, 7), smaller than the block everywhere
    label = np.ones((5, 7, 3))
    case = _case(tmp_path / "raw", "tiny", hu, label)
    manifest = preprocess("autopet", [case], tmp_path / "out", TABLE, _options())
    (entry,) = manifest["entries"]
    assert entry["offset"] == [-1, -1, 0]  # centred padding: (6-3)//2, (8-5)//2, (8-7)//2
    image, affine = load_image(tmp_path / "out" / entry["image"])
    lab, _ = load_label(tmp_path / "out" / entry["label"])
    assert image.shape == (6, 8, 8)
    np.testing.assert_allclose(image[1:4, 1:6, 0:7], 0.2, atol=1e-6)  # 200 HU in a [-1000, 1000] window
    assert (image[0] == -1).all() and (image[4:] == -1).all() and (lab[0] == 0).all()
    # Block voxel (1, 1, 0) is source voxel (0, 0, 0): same world coordinate.
    _, src_affine = load_image(case.image)
    np.testing.assert_allclose(affine @ [1, 0, 1, 1], src_affine @ [0, 0, 0, 1], atol=1e-4)


def test_all_background_blocks_are_skipped_logged_and_counted(tmp_path: Path, caplog) -> None:
    hu = np.zeros((8, 8, 20))
    label = np.zeros((8, 8, 20))
    label[2:6, 2:6, 0:4] = 3  # labels only in the first slices; D grid starts 0, 5, 9, 14
    case = _case(tmp_path / "raw", "sparse", hu, label)
    with caplog.at_level(logging.INFO, logger="dataset.preprocess"):
        manifest = preprocess("autopet", [case], tmp_path / "out", TABLE, _options())
    assert [e["offset"][0] for e in manifest["entries"]] == [0]
    assert manifest["skipped"]["all_background"] == 3
    assert manifest["cases"]["sparse"]["skipped"]["offsets"] == [[5, 0, 0], [9, 0, 0], [14, 0, 0]]
    assert caplog.text.count("labels are all background") == 3
    kept = preprocess("autopet", [case], tmp_path / "all", TABLE, _options(skip_background=False))
    assert len(kept["entries"]) == 4 and kept["skipped"]["all_background"] == 0


def test_reference_intensity_is_per_block_minmax(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-500, 500, (10, 10, 12))
    case = _case(tmp_path / "raw", "ref", hu, np.ones_like(hu))
    manifest = preprocess("autopet", [case], tmp_path / "out", TABLE, _options(intensity={"kind": "reference"}))
    for entry in manifest["entries"]:
        image, _ = load_image(tmp_path / "out" / entry["image"])
        assert image.min() == pytest.approx(-1) and image.max() == pytest.approx(1)
        assert entry["intensity_record"]["min"] >= -500 and entry["intensity_record"]["max"] <= 500


def test_random_sampler_is_seeded(tmp_path: Path) -> None:
    hu = np.zeros((16, 16, 30))
    case = _case(tmp_path / "raw", "rand", hu, np.ones_like(hu))

    def offsets(seed: int, name: str) -> list:
        opts = _options(sampler="random", blocks_per_volume=5, seed=seed)
        return [e["offset"] for e in preprocess("autopet", [case], tmp_path / name, TABLE, opts)["entries"]]

    first = offsets(1, "a")
    assert first == offsets(1, "b")
    assert first != offsets(2, "c")


def test_cases_of_one_patient_share_a_split(tmp_path: Path) -> None:
    cases = []
    for i in range(6):
        hu = np.zeros((8, 8, 6))
        cases.append(_case(tmp_path / "raw", f"c{i}", hu, np.ones_like(hu), patient=f"p{i // 2}"))
    manifest = preprocess("autopet", cases, tmp_path / "out", TABLE, _options(val_frac=0.34, test_frac=0.34))
    splits = {c: r["split"] for c, r in manifest["cases"].items()}
    assert splits["c0"] == splits["c1"] and splits["c2"] == splits["c3"] and splits["c4"] == splits["c5"]
    assert sorted(set(splits.values())) == ["test", "train", "val"]


def test_resample_to_spacing_keeps_the_field_of_view() -> None:
    image = np.random.default_rng(0).normal(size=(10, 12, 9)).astype(np.float32)  # (D, H, W)
    label = (image > 0).astype(np.int64)
    new_image, new_label, new_affine = resample_to_spacing(image, label, AFFINE, (5.0, 1.8, 2.6))
    assert new_image.shape == (5, 6, 4) and new_label.shape == (5, 6, 4)
    np.testing.assert_allclose(voxel_size_dhw(new_affine), (5.0, 1.8, 1.3 * 9 / 4), atol=1e-9)
    # The outer edge of voxel 0 (index -0.5) maps to the same world point on both grids.
    np.testing.assert_allclose(new_affine @ [-0.5, -0.5, -0.5, 1], AFFINE @ [-0.5, -0.5, -0.5, 1], atol=1e-9)
    assert set(np.unique(new_label)) <= {0, 1}


def test_discovery_errors_name_the_file(tmp_path: Path) -> None:
    write_autopet_raw(tmp_path / "ap", n_patients=2)
    (tmp_path / "ap" / "imagesTr" / "PETCT_0001ab_0_0002.nii.gz").unlink()
    with pytest.raises(DataError, match="PETCT_0001ab_0_0002.nii.gz: label partner"):
        discover_autopet(tmp_path / "ap")
    (tmp_path / "ap" / "imagesTr" / "PETCT_0000ab_0_0001.nii.gz").unlink()
    (tmp_path / "ap" / "imagesTr" / "PETCT_0001ab_0_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="no \\*_0001.nii.gz CT files"):
        discover_autopet(tmp_path / "ap")

    write_synthrad_raw(tmp_path / "sr", tmp_path / "sr_labels", n_patients=2)
    (tmp_path / "sr_labels" / "1PA001_ct_label.nii.gz").unlink()
    with pytest.raises(DataError, match="1PA001_ct_label.nii.gz: label partner"):
        discover_synthrad2023(tmp_path / "sr", tmp_path / "sr_labels")

    write_duke_raw(tmp_path / "dk", n_patients=2)
    (tmp_path / "dk" / "Breast_MRI_001" / "dense_and_vessels.nii.gz").unlink()
    with pytest.raises(DataError, match="dense_and_vessels.nii.gz: segmentation partner"):
        discover_duke(tmp_path / "dk", load_label_table("duke"))


def test_patient_regex_groups_studies(tmp_path: Path) -> None:
    write_autopet_raw(tmp_path / "ap", n_patients=2)
    cases = discover_autopet(tmp_path / "ap", patient_regex=r"^(PETCT_[0-9a-f]+)")
    assert [c.patient for c in cases] == ["PETCT_0000ab", "PETCT_0001ab"]
    with pytest.raises(DataError, match="does not match patient regex"):
        discover_autopet(tmp_path / "ap", patient_regex=r"^CT_")


def _duke_files(tmp_path: Path, seg: np.ndarray) -> tuple[Path, dict[str, Path]]:
    mr = write_nifti(tmp_path / "mr.nii.gz", np.zeros((6, 5, 4), np.float32))
    breast = write_nifti(tmp_path / "breast.nii.gz", np.ones((6, 5, 4), np.uint8))
    dv = write_nifti(tmp_path / "dense_and_vessels.nii.gz", seg.astype(np.uint8))
    return mr, {"breast": breast, "dense_and_vessels": dv}


def test_duke_merge_priority_and_unlisted_segments(tmp_path: Path) -> None:
    table = load_label_table("duke")
    seg = np.zeros((6, 5, 4, 2))
    seg[1:3, :, :, 0] = 1  # dense tissue
    seg[2, 2, :, 1] = 1  # a vessel crossing the dense tissue
    mr, files = _duke_files(tmp_path, seg)
    label = merge_segmentations(files, table, mr, (4, 6, 5), AFFINE, 1e-3)  # (D, H, W) = (K, I, J)
    assert label[0, 0, 0] == 1 and label[0, 1, 0] == 2 and label[0, 2, 2] == 3  # breast, dense, vessel wins
    seg3 = np.zeros((6, 5, 4, 3))
    seg3[0, 0, 0, 2] = 1  # a third layer the table does not list
    mr, files = _duke_files(tmp_path / "b", seg3)
    with pytest.raises(DataError, match="dense_and_vessels.nii.gz: layer 2 holds a segment"):
        merge_segmentations(files, table, mr, (4, 6, 5), AFFINE, 1e-3)
    mr, files = _duke_files(tmp_path / "c", np.full((6, 5, 4), 7))
    with pytest.raises(DataError, match=r"dense_and_vessels.nii.gz: values \[7\] are not listed"):
        merge_segmentations(files, table, mr, (4, 6, 5), AFFINE, 1e-3)


@pytest.mark.parametrize(
    "kw",
    [
        {"block_size": (0, 8, 8)},
        {"sampler": "sliding"},
        {"val_frac": 0.6, "test_frac": 0.5},
        {"spacing": (1.0, -1.0, 1.0)},
        {"intensity": {"kind": "zscore"}},
        {"blocks_per_volume": 0},
    ],
    ids=["block", "sampler", "fractions", "spacing", "intensity", "count"],
)
def test_invalid_options(kw: dict) -> None:
    with pytest.raises(ValueError):
        _options(**kw).validate()
