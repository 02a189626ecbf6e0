"""NIfTI loading (axis order, every bad-input error names the file), saving (round trip, header, no overwrite)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dataset.contract import DataError, validate_sample
from dataset.nifti import (
    StoredVolume,
    ijk_to_dhw,
    load_image,
    load_label,
    load_pair,
    make_sample,
    read_nifti,
    save_nifti,
    save_stored,
    shift_affine,
    voxel_size_dhw,
)
from tests.dataset.fakes import AFFINE, oblique_affine, write_nifti

SHAPE_IJK = (5, 7, 9)  # odd and all different, so a wrong permutation cannot go unnoticed


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 100, SHAPE_IJK).astype(np.float32)
    label = rng.integers(0, 4, SHAPE_IJK).astype(np.uint8)
    return write_nifti(tmp_path / "img.nii.gz", image), write_nifti(tmp_path / "lab.nii.gz", label), image, label


def test_load_permutes_ijk_to_dhw_and_keeps_the_affine(pair) -> None:
    image_path, label_path, image, label = pair
    img, lab, affine = load_pair(image_path, label_path, label_nc=4)
    assert img.shape == (9, 5, 7) and lab.shape == (9, 5, 7)
    assert img.dtype == np.float32 and lab.dtype == np.int64
    # (D, H, W) = (K, I, J): voxel (d, h, w) is stored voxel (h, w, d).
    assert img[8, 4, 6] == image[4, 6, 8] and img[2, 1, 3] == image[1, 3, 2]
    np.testing.assert_array_equal(lab, np.transpose(label, (2, 0, 1)))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)  # sform is float32 on disk
    np.testing.assert_allclose(voxel_size_dhw(affine), (2.5, 0.9, 1.3), atol=1e-5)


def test_sample_contract(pair) -> None:
    image_path, label_path, _, _ = pair
    img, lab, affine = load_pair(image_path, label_path, label_nc=4)
    sample = make_sample(np.clip(img / 400, -1, 1), lab, affine, "case")
    validate_sample(sample, 4)
    assert sample["image"].shape == (1, 9, 5, 7) and sample["label"].dtype == torch.int64
    assert sample["affine"].dtype == torch.float64 and sample["id"] == "case"


def test_round_trip_oblique_affine_is_exact(tmp_path: Path) -> None:
    affine = oblique_affine((0.7, 1.9, 3.3), (101.5, -7.25, 12.0), degrees=(33.0, 11.0, -48.0))
    data = np.random.default_rng(1).normal(size=SHAPE_IJK).astype(np.float32)
    src = write_nifti(tmp_path / "src.nii.gz", data, affine)
    dhw, aff1 = load_image(src)
    out = save_nifti(tmp_path / "out" / "copy.nii.gz", dhw, aff1)
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    np.testing.assert_array_equal(back.affine, nib.load(str(src)).affine)
    dhw2, aff2 = load_image(out)
    np.testing.assert_array_equal(dhw2, dhw)
    np.testing.assert_array_equal(aff2, aff1)
    np.testing.assert_allclose(aff1, affine, atol=1e-4)
    # Geometry-only header: nothing of the input's description/aux/intent leaks.
    hdr = back.header
    assert hdr["descrip"].item() == b"" and hdr["aux_file"].item() == b"" and hdr["intent_name"].item() == b""
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1


def test_labels_round_trip_as_integers(tmp_path: Path) -> None:
    label = np.random.default_rng(2).integers(0, 37, (9, 5, 7))
    out = save_nifti(tmp_path / "lab.nii.gz", torch.from_numpy(label)[None], AFFINE)
    assert nib.load(str(out)).get_data_dtype() == np.uint8
    back, _ = load_label(out, label_nc=37)
    np.testing.assert_array_equal(back, label)


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5), np.float32), AFFINE)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_nifti(path, np.ones((3, 4, 5), np.float32), AFFINE)
    assert path.read_bytes() == before
    save_nifti(path, np.ones((3, 4, 5), np.float32), AFFINE, overwrite=True)
    assert load_image(path)[0].max() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


@pytest.mark.parametrize(
    ("array", "affine", "name"),
    [
        (np.zeros((2, 3)), AFFINE, "a.nii.gz"),
        (np.zeros((3, 3, 3)), np.eye(3), "a.nii.gz"),
        (np.zeros((3, 3, 3)), AFFINE, "a.png"),
    ],
    ids=["2d", "bad-affine", "bad-suffix"],
)
def test_save_rejects_bad_arguments(tmp_path: Path, array, affine, name) -> None:
    with pytest.raises(ValueError):
        save_nifti(tmp_path / name, array, affine)


def test_shift_affine_matches_world_coordinates() -> None:
    offset = (3, -2, 5)  # (D, H, W), a negative start = padded block
    block = shift_affine(AFFINE, offset)
    for d, h, w in [(0, 0, 0), (4, 7, 1), (2, 2, 9)]:
        block_world = block @ np.array([h, w, d, 1.0])  # stored order (I, J, K) = (H, W, D)
        src_world = AFFINE @ np.array([h + offset[1], w + offset[2], d + offset[0], 1.0])
        np.testing.assert_allclose(block_world, src_world, atol=1e-9)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.nii.gz: file not found"):
        load_image(tmp_path / "nope.nii.gz")


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(DataError, match="garbage.nii.gz: cannot read"):
        load_image(bad)


def test_truncated_file(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "full.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.nii.gz: cannot read"):
        load_image(cut)


def test_missing_label_partner(pair, tmp_path: Path) -> None:
    image_path, _, _, _ = pair
    with pytest.raises(DataError, match="missing_lab.nii.gz: label partner of image .*img.nii.gz not found"):
        load_pair(image_path, tmp_path / "missing_lab.nii.gz", label_nc=4)


def test_missing_image_partner(pair, tmp_path: Path) -> None:
    _, label_path, _, _ = pair
    with pytest.raises(DataError, match="missing_img.nii.gz: image partner of label"):
        load_pair(tmp_path / "missing_img.nii.gz", label_path, label_nc=4)


def test_shape_mismatch(pair, tmp_path: Path) -> None:
    image_path, _, _, _ = pair
    other = write_nifti(tmp_path / "small_lab.nii.gz", np.zeros((5, 7, 8), np.uint8))
    with pytest.raises(DataError, match=r"small_lab.nii.gz: shape \(8, 5, 7\) differs"):
        load_pair(image_path, other, label_nc=4)


def test_affine_mismatch_beyond_tolerance(pair, tmp_path: Path) -> None:
    image_path, _, _, label = pair
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    other = write_nifti(tmp_path / "moved_lab.nii.gz", label, moved)
    with pytest.raises(DataError, match="moved_lab.nii.gz: affine differs"):
        load_pair(image_path, other, label_nc=4)
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-4  # float rounding between tools: accepted
    ok = write_nifti(tmp_path / "nudged_lab.nii.gz", label, nudged)
    load_pair(image_path, ok, label_nc=4)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_image(tmp_path: Path, bad: float) -> None:
    data = np.zeros(SHAPE_IJK, np.float32)
    data[1, 2, 3] = bad
    path = write_nifti(tmp_path / "nonfinite.nii.gz", data)
    with pytest.raises(DataError, match="nonfinite.nii.gz: image holds 1 NaN/Inf"):
        load_image(path)


def test_label_out_of_range(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "big_lab.nii.gz", np.full(SHAPE_IJK, 4, np.uint8))
    with pytest.raises(DataError, match=r"big_lab.nii.gz: label values \[4\] outside \[0, 4\)"):
        load_label(path, label_nc=4)


def test_negative_label(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "neg_lab.nii.gz", np.full(SHAPE_IJK, -1, np.int16))
    with pytest.raises(DataError, match="neg_lab.nii.gz: label values"):
        load_label(path, label_nc=4)


def test_non_integer_label(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "float_lab.nii.gz", np.full(SHAPE_IJK, 1.5, np.float32))
    with pytest.raises(DataError, match="float_lab.nii.gz: label map holds non-integer"):
        load_label(path, label_nc=4)


def test_4d_file_rejected_but_trailing_singleton_accepted(tmp_path: Path) -> None:
    four_d = write_nifti(tmp_path / "four_d.nii.gz", np.zeros((*SHAPE_IJK, 2), np.float32))
    with pytest.raises(DataError, match="four_d.nii.gz: expected a 3-D volume.*4-D"):
        load_image(four_d)
    assert read_nifti(four_d, allow_4d=True)[0].shape == (*SHAPE_IJK, 2)
    single = write_nifti(tmp_path / "single.nii.gz", np.ones((*SHAPE_IJK, 1), np.float32))
    assert load_image(single)[0].shape == (9, 5, 7)


def test_2d_file_rejected(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "flat.nii.gz", np.zeros((5, 7), np.float32))
    with pytest.raises(DataError, match="flat.nii.gz: expected a 3-D volume"):
        load_image(path)


def test_ijk_to_dhw_inverse() -> None:
    x = np.arange(5 * 7 * 9).reshape(SHAPE_IJK)
    from dataset.nifti import dhw_to_ijk

    np.testing.assert_array_equal(dhw_to_ijk(ijk_to_dhw(x)), x)


def test_the_same_volume_always_gives_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both writers: a rerun's volumes compare equal byte for byte (no temporary file name or mtime in the gzip)."""
    import time

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    stored = StoredVolume(rng.integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16), 0.5, -10.0, oblique_affine())
    first = [
        save_nifti(tmp_path / "a" / "x.nii.gz", image, AFFINE),
        save_stored(tmp_path / "a" / "s.nii.gz", stored.stored, stored),
    ]
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 1000.0)  # a later run
    second = [
        save_nifti(tmp_path / "b" / "x.nii.gz", image, AFFINE),
        save_stored(tmp_path / "b" / "s.nii.gz", stored.stored, stored),
    ]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
        with gzip.open(b, "rb") as fh:  # still a plain gzip stream that any reader takes
            assert len(fh.read()) > 352
