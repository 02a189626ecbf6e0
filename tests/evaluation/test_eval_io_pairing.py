"""NIfTI loading, the pairing rule, intensity mapping and the output-file rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from dataset import DataError
from dataset.files import atomic_write_text, check_output_files
from dataset.nifti import load_image
from evaluation.intensity import IntensityRange
from evaluation.nifti_io import check_same_grid, list_nifti, read_header
from evaluation.pairing import group_by_id, pair_folders


def test_header_and_loader_agree_on_dhw_order_and_affine(tmp_path, nifti, affine):
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)  # (D, H, W)
    path = nifti(tmp_path / "a.nii.gz", vol)
    assert np.asarray(nib.load(str(path)).dataobj).shape == (4, 5, 3)  # stored (I, J, K)
    data, loaded_affine = load_image(path)  # dataset.nifti, what evaluation reads voxels with
    np.testing.assert_array_equal(data, vol)
    header = read_header(path)
    assert header.shape == data.shape == (3, 4, 5)
    np.testing.assert_allclose(header.affine, affine)
    np.testing.assert_allclose(loaded_affine, affine)


def test_header_accepts_trailing_singleton_and_rejects_4d_and_junk(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 1), np.float32), np.eye(4)), str(tmp_path / "ok.nii.gz"))
    assert read_header(tmp_path / "ok.nii.gz").shape == (3, 4, 5)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 2), np.float32), np.eye(4)), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(DataError, match=r"bad\.nii\.gz.*3-D volume"):
        read_header(tmp_path / "bad.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"junk\.nii\.gz.*cannot read"):
        read_header(tmp_path / "junk.nii.gz")


def test_check_same_grid(tmp_path, nifti):
    a = read_header(nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32)))
    b = read_header(nifti(tmp_path / "b.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4)))
    c = read_header(nifti(tmp_path / "c.nii.gz", np.zeros((4, 4, 5), np.float32)))
    with pytest.raises(DataError, match=r"b\.nii\.gz: affine differs"):
        check_same_grid(a, b)
    with pytest.raises(DataError, match=r"c\.nii\.gz: shape"):
        check_same_grid(a, c)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(folder / name))


def test_pairing_rule(tmp_path):
    _touch(tmp_path / "real", "p1.nii.gz", "p2.nii", "p3_s0.nii.gz")
    _touch(tmp_path / "fake", "p1_s0.nii.gz", "p1_s1.nii.gz", "p2.nii.gz", "p3_s0.nii.gz", "p3_s0_s2.nii.gz")
    pairs = pair_folders(tmp_path / "real", tmp_path / "fake")
    got = [(p.id, p.synthetic.name, p.sample) for p in pairs]
    assert got == [
        ("p1", "p1_s0.nii.gz", 0),
        ("p1", "p1_s1.nii.gz", 1),
        ("p2", "p2.nii.gz", None),
        ("p3_s0", "p3_s0.nii.gz", None),  # exact name wins over the suffix rule
        ("p3_s0", "p3_s0_s2.nii.gz", 2),
    ]
    assert [len(g) for g in group_by_id(pairs).values()] == [2, 1, 2]


def test_pairing_errors_list_the_files(tmp_path):
    _touch(tmp_path / "real", "p1.nii.gz", "p2.nii.gz", "p9.nii.gz")
    _touch(tmp_path / "fake", "p1_s0.nii.gz", "p2_sample0.nii.gz", "q7.nii.gz")
    with pytest.raises(DataError) as err:
        pair_folders(tmp_path / "real", tmp_path / "fake")
    msg = str(err.value)
    assert "p2_sample0.nii.gz" in msg and "q7.nii.gz" in msg  # unmatched synthetic files
    assert "p2.nii.gz" in msg and "p9.nii.gz" in msg  # references without a synthetic file


def test_listing_rejects_ambiguous_and_empty_folders(tmp_path):
    _touch(tmp_path / "dup", "a.nii", "a.nii.gz")
    with pytest.raises(DataError, match="only the suffix differs"):
        list_nifti(tmp_path / "dup")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        list_nifti(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        list_nifti(tmp_path / "missing")


def test_intensity_mapping_and_out_of_range_policy():
    hu = np.array([-1000.0, 0.0, 1000.0, 1000.004], np.float32)  # last: float round-off, inside tolerance
    rng = IntensityRange(-1000, 1000)
    np.testing.assert_allclose(rng.to_unit(hu, "ct"), [0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert rng.clipped_voxels == 0
    bad = np.array([-1024.0, 0.0, 3000.0], np.float32)
    with pytest.raises(DataError, match=r"ct\.nii\.gz: 2 voxel\(s\).*outside.*--clip"):
        rng.to_unit(bad, "ct.nii.gz")
    clipping = IntensityRange(-1000, 1000, clip=True)
    np.testing.assert_allclose(clipping.to_unit(bad, "ct.nii.gz"), [0.0, 0.5, 1.0])
    assert clipping.describe()["clipped_voxels"] == 2
    assert clipping.describe()["clipped_files"] == {"ct.nii.gz": 2}
    with pytest.raises(ValueError, match="lo < hi"):
        IntensityRange(1, -1)


def test_overwrite_refusal_and_atomic_write(tmp_path):
    out = tmp_path / "r.json"
    check_output_files([out], overwrite=False)  # nothing there yet
    atomic_write_text(out, "first")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_files([out], overwrite=False)
    check_output_files([out], overwrite=True)
    with pytest.raises(DataError, match="not written by this project"):
        check_output_files([out], overwrite=True, ours=lambda p: False)
    atomic_write_text(out, "second")
    assert out.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
