"""Privacy audit: nearest training volumes, calibrated thresholds, copies flagged."""

from __future__ import annotations

import numpy as np
import pytest

from dataset import DataError
from evaluation.intensity import IntensityRange
from evaluation.privacy import avgpool_features, privacy_audit


def _audit(fakes, train, **kw):
    rng = IntensityRange(-1, 1)
    return privacy_audit(fakes, train, rng, rng, avgpool_features, "avgpool", progress=False, **kw)


def test_exact_copy_is_flagged_and_a_new_volume_is_not(tmp_path, nifti, volume):
    train = [nifti(tmp_path / "train" / f"t{i}.nii.gz", volume(i)) for i in range(4)]
    copy = nifti(tmp_path / "fake" / "f_copy.nii.gz", volume(2))
    flat = (0.05 * np.random.default_rng(0).standard_normal((16, 16, 16))).astype(np.float32)  # no structure
    new = nifti(tmp_path / "fake" / "f_new.nii.gz", flat)
    audit = _audit([copy, new], train)
    by_name = {e["fake"]: e for e in audit["per_volume"]}
    assert by_name["f_copy.nii.gz"]["nearest_train_ssim"] == "t2.nii.gz"
    assert by_name["f_copy.nii.gz"]["nn_ssim"] == pytest.approx(1.0)
    assert by_name["f_copy.nii.gz"]["nn_feature_distance"] == 0.0
    assert by_name["f_new.nii.gz"]["nn_ssim"] < audit["thresholds"]["nn_ssim"]["value"]
    assert by_name["f_new.nii.gz"]["nn_feature_distance"] > audit["thresholds"]["nn_feature_distance"]["value"]
    assert [c["fake"] for c in audit["suspected_copies"]] == ["f_copy.nii.gz"]
    assert audit["suspected_copies"][0]["exact_copy"] and "exact copy" in audit["suspected_copies"][0]["reasons"]
    assert audit["thresholds"]["nn_ssim"]["reference_pairs"] == 6
    assert audit["summary"]["nn_ssim"]["max"] == pytest.approx(1.0) and audit["summary"]["nn_ssim"]["n"] == 2


def test_reference_pairs_are_capped_and_seeded(tmp_path, nifti, volume):
    train = [nifti(tmp_path / f"t{i}.nii.gz", volume(i)) for i in range(5)]
    fake = [nifti(tmp_path / "fake" / "f.nii.gz", volume(50))]
    a = _audit(fake, train, max_reference_pairs=3)
    b = _audit(fake, train, max_reference_pairs=3)
    assert a["thresholds"]["nn_ssim"] == b["thresholds"]["nn_ssim"]
    assert a["thresholds"]["nn_ssim"]["reference_pairs"] == 3


def test_shape_mismatch_and_bad_arguments(tmp_path, nifti, volume):
    train = [nifti(tmp_path / "t0.nii.gz", volume(0))]
    odd = nifti(tmp_path / "fake" / "odd.nii.gz", np.zeros((16, 16, 12), np.float32))
    with pytest.raises(DataError, match=r"odd\.nii\.gz: shape"):
        _audit([odd], train)
    with pytest.raises(ValueError, match="at least one training volume"):
        _audit([odd], [])
    # A single training volume: no calibrated threshold, only exact copies can be flagged.
    audit = _audit([nifti(tmp_path / "fake" / "c.nii.gz", volume(0))], train)
    assert audit["thresholds"]["nn_ssim"]["value"] is None
    assert audit["suspected_copies"][0]["reasons"] == ["exact copy"]


def test_avgpool_features_shape():
    import torch

    assert avgpool_features(torch.rand(16, 32, 32)).shape == (512,)
