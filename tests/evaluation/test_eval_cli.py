"""compute_metrics end to end on NIfTI folders (non-identity affines), in a subprocess and in-process."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluation
from dataset.files import write_run_record
from evaluation.compute_metrics import main

SCRIPT = Path(evaluation.__file__).parent / "compute_metrics.py"


def _strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture
def folders(tmp_path, nifti, volume):
    """real/ labels/ fake/ train/ with two cases: fake case_a is an exact copy, fake case_b a noisy version."""
    a, b = volume(1), volume(2)
    for name, vol in (("case_a", a), ("case_b", b)):
        nifti(tmp_path / "real" / f"{name}.nii.gz", vol)
        nifti(tmp_path / "labels" / f"{name}.nii.gz", (vol > 0).astype(np.int16))
    nifti(tmp_path / "fake" / "case_a_s0.nii.gz", a)
    noisy = np.clip(b + 0.3 * np.random.default_rng(0).standard_normal(b.shape), -1, 1).astype(np.float32)
    nifti(tmp_path / "fake" / "case_b_s1.nii.gz", noisy)
    for name, vol in (("t_a", a), ("t_1", volume(3)), ("t_2", volume(4))):
        nifti(tmp_path / "train" / f"{name}.nii.gz", vol)
    return tmp_path


def _base(root: Path, out: str = "x.json") -> list[str]:
    return ["--real", str(root / "real"), "--fake", str(root / "fake"), "--out", str(root / out), *RANGE]


RANGE = ["--data-range", "-1", "1"]


def _run(args: list[str], cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evaluation.compute_metrics"] if module else [sys.executable, str(SCRIPT)]
    env = os.environ | {"TORCH_HOME": str(cwd / "torch_home")}  # never the user's hub cache
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # end to end (a full training resumed / every metric through the CLI): run by .ci/run's slow stage
def test_script_end_to_end_with_random_weights(folders):
    # The synthetic folder's range comes from generation's run record; the real ones are stated.
    outputs = ["case_a_s0.nii.gz", "case_b_s1.nii.gz"]
    write_run_record(folders / "fake" / "generation.json", {"data_range": [-1.0, 1.0], "outputs": outputs})
    args = ["--real", "real", "--fake", "fake", "--labels", "labels", "--train", "train", "--out", "out/r.json"]
    proc = _run(args + ["--real-range", "-1", "1", "--random-weights", "--slice-step", "16", "--no-progress"], folders)
    assert proc.returncode == 0, proc.stderr
    report = _strict_json(folders / "out" / "r.json")
    assert report["random_weights"] is True
    assert all(rec["random"] for rec in report["weights"].values())
    assert set(report["weights"]) == {"lpips_vgg16", "inception", "medicalnet"}

    copy, noisy = report["per_pair"]
    assert (copy["fake"], noisy["fake"]) == ("case_a_s0.nii.gz", "case_b_s1.nii.gz")
    assert (copy["psnr"], copy["rmse"], copy["lpips"]) == ("inf", 0.0, 0.0)
    assert copy["ssim"] == pytest.approx(1.0) and copy["ssim2d"] == pytest.approx(1.0)
    assert copy["msssim"] == pytest.approx(1.0)
    assert 0.0 < noisy["ssim"] < 0.9 and noisy["lpips"] > 0.0
    assert noisy["psnr"] == pytest.approx(-20 * math.log10(noisy["rmse"]))

    metrics = report["metrics"]
    assert metrics["ssim"]["settings_by_shape"]["16x16x16"]["window"] == [11, 11, 11]
    assert metrics["msssim"]["settings_by_shape"]["16x16x16"]["scales"] == 2
    for key, unit in (("fid", "slices"), ("fid3d", "volumes")):
        assert math.isfinite(metrics[key]["value"]) and metrics[key]["value"] > 0.0
        assert metrics[key][f"n_real_{unit}"] == 2 and metrics[key][f"n_fake_{unit}"] == 2
    assert any("rank-deficient" in w for w in report["warnings"])
    assert report["intensity"]["real"]["range"] == [-1.0, 1.0]
    assert "--real-range" in report["intensity"]["real"]["source"]
    assert report["intensity"]["fake"]["source"].endswith("generation.json (data_range)")
    assert report["metrics"]["fid3d"]["input_convention"] == "project"

    audit = report["privacy"]
    assert [(c["fake"], c["nearest_train_ssim"], c["exact_copy"]) for c in audit["suspected_copies"]][0] == (
        "case_a_s0.nii.gz",
        "t_a.nii.gz",
        True,
    )
    assert not any(c["fake"] == "case_b_s1.nii.gz" and c["exact_copy"] for c in audit["suspected_copies"])

    md = (folders / "out" / "r.md").read_text()
    assert "| FID | 3D-FID | LPIPS | SSIM | RMSE | PSNR | MS-SSIM | SSIM-2D |" in md
    assert "RANDOM WEIGHTS" in md and "Privacy audit" in md
    assert "- MS-SSIM per shape: 16x16x16: 2 scales, window 7x7x7" in md
    assert "- data range (fake): [-1, 1] from " in md and "generation.json (data_range)" in md
    assert "- 3D-FID: extractor MedicalNet ResNet-50 (23 datasets); input convention `project`" in md


def test_module_entry_point_refuses_to_overwrite(folders, caplog):
    out = folders / "r.json"
    out.write_text("precious")
    proc = _run(["--real", "real", "--fake", "fake", "--out", "r.json", "--metrics", "psnr", *RANGE], folders, True)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr
    assert out.read_text() == "precious"
    # --overwrite replaces only a report this tool wrote, never someone else's file of that name.
    with caplog.at_level(logging.ERROR):
        assert main([*_base(folders, "r.json"), "--metrics", "rmse", "--overwrite"]) == 2
    assert "not written by this project" in caplog.text and out.read_text() == "precious"
    out.unlink()
    assert main([*_base(folders, "r.json"), "--metrics", "psnr"]) == 0
    assert main([*_base(folders, "r.json"), "--metrics", "rmse", "--overwrite"]) == 0
    assert _strict_json(out)["metrics"]["rmse"]["n"] == 2
    assert (folders / "r.md").exists()


def test_identical_folders_give_known_answers(folders):
    args = ["--real", str(folders / "real"), "--fake", str(folders / "real"), "--out", str(folders / "same.json")]
    args += RANGE
    assert main(args + ["--metrics", "psnr,rmse,ssim,ssim2d,msssim,fid3d", "--random-weights", "--no-progress"]) == 0
    report = _strict_json(folders / "same.json")
    m = report["metrics"]
    assert (m["psnr"]["mean"], m["psnr"]["n_identical"], m["rmse"]["mean"]) == ("inf", 2, 0.0)
    assert m["ssim"]["mean"] == pytest.approx(1.0) and m["msssim"]["mean"] == pytest.approx(1.0)
    assert abs(m["fid3d"]["value"]) < 1e-9


def test_pairing_error_lists_files_and_writes_nothing(folders, nifti, volume, caplog):
    nifti(folders / "real" / "case_c.nii.gz", volume(5))
    nifti(folders / "fake" / "stray.nii.gz", volume(6))
    with caplog.at_level(logging.ERROR):
        rc = main(_base(folders))
    assert rc == 2
    assert "stray.nii.gz" in caplog.text and "case_c.nii.gz" in caplog.text
    assert not (folders / "x.json").exists()


def test_missing_weights_error_names_the_file(folders, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(folders / "empty_torch_home"))
    with caplog.at_level(logging.ERROR):
        rc = main([*_base(folders), "--metrics", "psnr,fid"])
    assert rc == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in caplog.text and "--weights-dir" in caplog.text
    assert not (folders / "x.json").exists()


def test_hounsfield_volumes_need_a_stated_range_and_clipping_is_counted(tmp_path, nifti, volume, caplog):
    hu = volume(7) * 1000.0
    hu[0, 0, :3] = [-1024.0, 2500.0, 3000.0]  # outside the [-1000, 1000] window
    nifti(tmp_path / "real" / "p.nii.gz", hu)
    nifti(tmp_path / "fake" / "p.nii.gz", np.clip(hu, -1000, 1000))
    base = ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--metrics", "psnr,rmse,ssim"]
    with caplog.at_level(logging.ERROR):
        assert main(base + ["--out", str(tmp_path / "a.json"), *RANGE]) == 2
    assert "p.nii.gz" in caplog.text and "outside the stated data range [-1, 1]" in caplog.text
    assert main(base + ["--out", str(tmp_path / "b.json"), "--data-range", "-1000", "1000", "--clip"]) == 0
    report = _strict_json(tmp_path / "b.json")
    assert report["intensity"]["real"]["clipped_voxels"] == 3
    assert report["intensity"]["fake"]["clipped_voxels"] == 0
    assert report["metrics"]["rmse"]["mean"] == 0.0  # both clipped to the same window
    assert any("clipped voxels" in w for w in report["warnings"])


def test_label_maps_must_match_the_cases(folders, caplog):
    (folders / "labels" / "case_b.nii.gz").unlink()
    with caplog.at_level(logging.ERROR):
        rc = main([*_base(folders), "--labels", str(folders / "labels"), "--metrics", "rmse"])
    assert rc == 2 and "without label map ['case_b']" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "psnr,bogus"], "unknown metric"),
        (["--metrics", "privacy"], "needs --train"),
        (["--slice-step", "0"], "must be a positive integer"),
        (["--data-range", "1", "-1"], "lo < hi"),
    ],
    ids=["unknown-metric", "privacy-without-train", "slice-step", "inverted-range"],
)
def test_bad_arguments_are_reported(folders, caplog, capsys, extra, message):
    with caplog.at_level(logging.ERROR):
        rc = main(
            ["--real", str(folders / "real"), "--fake", str(folders / "fake"), "--out", str(folders / "x.json")]
            + (extra if "--data-range" in extra else [*RANGE, *extra])
        )
    # refused while parsing (argparse's one line on stderr) or by the command (logged)
    assert rc == 2 and message in caplog.text + capsys.readouterr().err


def test_privacy_falls_back_to_avgpool_features_without_weights(folders, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(folders / "empty_torch_home"))
    args = [*_base(folders, "p.json"), "--train", str(folders / "train"), "--metrics", "rmse,privacy", "--no-progress"]
    assert main(args) == 0
    report = _strict_json(folders / "p.json")
    assert report["weights"] == {}  # no network was built
    assert report["privacy"]["features"].startswith("avgpool")
    assert [c["fake"] for c in report["privacy"]["suspected_copies"] if c["exact_copy"]] == ["case_a_s0.nii.gz"]
