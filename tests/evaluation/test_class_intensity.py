"""evaluation.class_intensity: per-class medians of synthetic vs real volumes, pooled over cases, in file units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset import DataError
from dataset.files import write_run_record
from dataset.nifti import save_nifti
from evaluation.class_intensity import class_intensity, main

NAMES = ["background", "liver", "fat", "unused"]
HU = {"real": (-1000.0, 55.0, -100.0), "fake": (-990.0, 70.0, -100.0)}


def write_cases(root: Path, n: int = 2, samples: int = 2) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((16, 16, 16), dtype=np.uint8)
        label[4:12, 4:12, 2:8] = 1
        label[4:12, 4:12, 8:14] = 2
        save_nifti(root / "labels" / f"c{i}.nii.gz", label, np.eye(4))
        for kind, levels in HU.items():
            for k in range(samples if kind == "fake" else 1):
                image = np.choose(label, levels) + rng.normal(0.0, 3.0, label.shape)
                name = f"c{i}_s{k}.nii.gz" if kind == "fake" else f"c{i}.nii.gz"
                save_nifti(root / kind / name, image.astype(np.float32), np.eye(4))


def test_medians_per_class_pooled_over_cases_and_samples(tmp_path: Path) -> None:
    write_cases(tmp_path)
    table = class_intensity(tmp_path / "real", tmp_path / "fake", tmp_path / "labels", NAMES)
    assert list(table) == ["background", "liver", "fat"]  # classes that occur, in order
    assert table["liver"]["voxels"] == 2 * 8 * 8 * 6  # real voxels once per case
    assert table["liver"]["real_median"] == pytest.approx(55.0, abs=1.0)
    assert table["liver"]["fake_median"] == pytest.approx(70.0, abs=1.0)
    assert table["liver"]["median_difference"] == pytest.approx(15.0, abs=1.5)
    assert table["fat"]["median_difference"] == pytest.approx(0.0, abs=1.5)
    assert table["liver"]["real_p25"] < table["liver"]["real_median"] < table["liver"]["real_p75"]


def test_cli_writes_both_reports_and_refuses_mixed_units(tmp_path: Path) -> None:
    write_cases(tmp_path, n=1, samples=1)
    out = tmp_path / "report" / "ci.json"
    argv = ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--labels", str(tmp_path / "labels"),
            "--class-names", *NAMES, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["classes"]["liver"]["fake_median"] == pytest.approx(70.0, abs=1.0)
    assert "| liver | 384 |" in out.with_suffix(".md").read_text()
    assert main(argv) == 2  # exists: needs --overwrite
    assert main([*argv, "--overwrite"]) == 0
    write_run_record(tmp_path / "real" / "generation.json", {"data_range": [-1000, 1000], "outputs": ["c0.nii.gz"]})
    write_run_record(tmp_path / "fake" / "generation.json", {"data_range": [-1, 1], "outputs": ["c0_s0.nii.gz"]})
    assert main([*argv, "--overwrite"]) == 2


def test_missing_label_map_and_out_of_range_labels_are_errors(tmp_path: Path) -> None:
    write_cases(tmp_path, n=1, samples=1)
    with pytest.raises(DataError):  # label value 2 with only two class names
        class_intensity(tmp_path / "real", tmp_path / "fake", tmp_path / "labels", NAMES[:2])
    (tmp_path / "labels" / "c0.nii.gz").rename(tmp_path / "labels" / "other.nii.gz")
    with pytest.raises(DataError, match="no label map c0"):
        class_intensity(tmp_path / "real", tmp_path / "fake", tmp_path / "labels", NAMES)
