"""dataset/describe.py: a split's size, intensity spec, padding/cropping and voxel sizes are logged, not hidden."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from dataset.describe import log_split_summary
from tests.dataset.fakes import write_nifti
from tests.scripts.own_data import write_own_ct_folder


def test_padding_cropping_and_voxel_sizes_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_own_ct_folder(tmp_path / "d", n_cases=4)  # (D, H, W): 11x14x13, 11x15x12, 9x13x13, 10x14x11
    images = sorted((tmp_path / "d" / "images").glob("*.nii.gz"))
    spec = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0, "invertible": True}
    with caplog.at_level(logging.INFO, logger="dataset"):
        summary = log_split_summary("d", "train", images, [12, 16, 12], spec)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert summary == {"volumes": 4, "padded": 4, "cropped": 2, "voxel_sizes": [(2.5, 0.9, 1.3)]}
    assert "d train: 4 volumes; intensity ct_window (hu_min -1000.0, hu_max 1000.0)" in text
    assert "4 of 4 volumes are padded to block_size 12x16x12" in text and "e.g. 11x14x13 -> 12x16x12" in text
    assert "2 of 4 volumes are cropped" in text and "no resampling" in text
    assert [r.levelname for r in caplog.records].count("WARNING") == 1  # the crop


def test_differing_voxel_sizes_warn_that_nothing_is_resampled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = []
    for i, zoom in enumerate((1.0, 2.0)):
        affine = np.diag([zoom, 1.0, 3.0, 1.0])
        paths.append(write_nifti(tmp_path / f"v{i}.nii", np.zeros((8, 8, 4), np.float32), affine))
    with caplog.at_level(logging.INFO, logger="dataset"):
        summary = log_split_summary("x", "val", paths, None, None)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert summary["voxel_sizes"] == [(3.0, 1.0, 1.0), (3.0, 2.0, 1.0)]
    assert "intensity none (images must already lie in [-1, 1])" in text
    assert "block_size null" in text and "NOT resampled" in text
