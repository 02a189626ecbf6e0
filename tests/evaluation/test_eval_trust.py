"""Evaluation never loses or mislabels a result: report paths, permissions, data ranges, outputs checked first,
names from files checked, missing weights skipped or explained, 3D-FID input conventions."""

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
import torch

import evaluation
from dataset import DataError
from dataset.files import write_run_record
from evaluation import compute_metrics, segmentation, segmenter
from evaluation.intensity import recorded_range
from evaluation.medicalnet import build_medicalnet, network_input, volume_features
from evaluation.report import report_paths

SCRIPT = Path(evaluation.__file__).parent / "compute_metrics.py"
RANGE = ["--data-range", "-1", "1"]


@pytest.fixture
def unit_folders(tmp_path, nifti, volume):
    """real/ and fake/ volumes stored in [0, 1] (not the model's [-1, 1]); fake = real + seeded noise."""
    rng = np.random.default_rng(3)
    pairs = {}
    for name, seed in (("c1", 1), ("c2", 2)):
        real = (volume(seed) + 1.0) / 2.0
        fake = np.clip(real + 0.05 * rng.standard_normal(real.shape), 0, 1).astype(np.float32)
        nifti(tmp_path / "real" / f"{name}.nii.gz", real)
        nifti(tmp_path / "fake" / f"{name}_s0.nii.gz", fake)
        pairs[name] = (real, fake)
    return tmp_path, pairs


def _args(root: Path, out: str, *extra: str) -> list[str]:
    return ["--real", str(root / "real"), "--fake", str(root / "fake"), "--out", str(root / out), *extra]


def test_out_ending_in_md_keeps_json_and_markdown_apart(unit_folders):
    root, _ = unit_folders
    assert report_paths(Path("r.md")) == (Path("r.json"), Path("r.md"))
    assert report_paths(Path("r.json")) == (Path("r.json"), Path("r.md"))
    assert report_paths(Path("r")) == (Path("r"), Path("r.md"))
    assert compute_metrics.main(_args(root, "r.md", "--metrics", "psnr", "--data-range", "0", "1")) == 0
    assert json.loads((root / "r.json").read_text())["metrics"]["psnr"]["n"] == 2  # still JSON
    assert (root / "r.md").read_text().startswith("# Evaluation")


def test_reports_follow_the_umask(unit_folders):
    root, _ = unit_folders
    old = os.umask(0o022)
    try:
        assert compute_metrics.main(_args(root, "u.json", "--metrics", "rmse", "--data-range", "0", "1")) == 0
    finally:
        os.umask(old)
    assert (root / "u.json").stat().st_mode & 0o777 == 0o644
    assert (root / "u.md").stat().st_mode & 0o777 == 0o644


def test_no_silent_default_range(unit_folders, caplog):
    root, pairs = unit_folders
    with caplog.at_level(logging.ERROR):
        assert compute_metrics.main(_args(root, "a.json", "--metrics", "psnr")) == 2
    # the error shows what the volumes hold, and what to pass
    assert "no data range is recorded" in caplog.text and "their values lie in [0, 1]" in caplog.text
    assert "--data-range LO HI" in caplog.text
    assert not (root / "a.json").exists()

    # generation's run record (fake) and a preprocessing manifest (real) state [0, 1]: PSNR has its true value
    write_run_record(root / "fake" / "generation.json", {"data_range": [0, 1], "outputs": ["c1_s0.nii.gz"]})
    manifest = {"producer": "med-lsdm", "entries": [{"image": "real/c1.nii.gz"}], "data_range": [0, 1]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert compute_metrics.main(_args(root, "b.json", "--metrics", "psnr")) == 0
    report = json.loads((root / "b.json").read_text())
    expected = np.mean([10 * math.log10(1 / np.mean((f.astype(np.float64) - r) ** 2)) for r, f in pairs.values()])
    assert report["metrics"]["psnr"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert report["intensity"]["real"]["source"].endswith("manifest.json (data_range)")
    # the old silent default, [-1, 1], scores the same volumes 6 dB higher
    assert compute_metrics.main(_args(root, "c.json", "--metrics", "psnr", *RANGE)) == 0
    wrong = json.loads((root / "c.json").read_text())
    assert wrong["metrics"]["psnr"]["mean"] - expected == pytest.approx(20 * math.log10(2), abs=1e-6)
    assert any("overrides the range [0, 1] recorded" in w for w in wrong["warnings"])


def test_recorded_ranges_from_intensity_spec_and_manifest_layout(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    write_run_record(gen / "generation.json", {"intensity": {"kind": "ct_window", "hu_min": -1000, "hu_max": 400}})
    assert recorded_range(gen)[:2] == (-1000.0, 400.0)
    write_run_record(gen / "generation.json", {"intensity": {"kind": "percentile"}})
    assert recorded_range(gen)[:2] == (-1.0, 1.0)
    (gen / "generation.json").write_text(json.dumps({"data_range": [0, 1]}))  # not ours: no producer
    assert recorded_range(gen) is None
    # preprocessing layout DST/manifest.json + DST/blocks-<id>/test/images/<id>.nii.gz
    dst = tmp_path / "dst"
    images = dst / "blocks-1a2b" / "test" / "images"
    images.mkdir(parents=True)
    manifest = {"producer": "med-lsdm", "entries": [{"image": "blocks-1a2b/test/images/a_b000.nii.gz"}]}
    (dst / "manifest.json").write_text(json.dumps(manifest | {"images_normalized": True}))
    assert recorded_range(images)[:2] == (-1.0, 1.0)
    (dst / "other").mkdir()
    assert recorded_range(dst / "other") is None  # a manifest describes only its own folders
    (dst / "manifest.json").write_text(json.dumps({"entries": manifest["entries"], "images_normalized": True}))
    assert recorded_range(images) is None  # not one of ours


def _run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"TORCH_HOME": str(cwd / "torch_home")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_bad_output_location_fails_first_in_one_line(unit_folders, monkeypatch, caplog):
    root, _ = unit_folders
    (root / "afile").write_text("x")
    proc = _run_script(_args(root, "afile/r.json", "--metrics", "psnr", *RANGE), root)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "existing file, not a folder" in proc.stderr
    # in-process: nothing is paired, read or computed before the check
    monkeypatch.setattr(compute_metrics, "pair_folders", lambda *a: pytest.fail("paired before the output check"))
    (root / "adir.json").mkdir()
    with caplog.at_level(logging.ERROR):
        assert compute_metrics.main(_args(root, "afile/r.json", *RANGE)) == 2
        assert compute_metrics.main(_args(root, "adir.json", *RANGE)) == 2
    assert "existing folder" in caplog.text


def test_segmentation_checks_outputs_before_training(tmp_path, nifti, volume, monkeypatch, caplog):
    for name in ("c1", "c2"):
        nifti(tmp_path / "img" / f"{name}.nii.gz", volume(1))
        nifti(tmp_path / "lab" / f"{name}.nii.gz", (volume(1) > 0).astype(np.int16))
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(segmentation, "train_segmenter", lambda *a, **k: pytest.fail("trained before the check"))
    monkeypatch.setattr(segmentation, "load_cases", lambda *a, **k: pytest.fail("loaded before the check"))
    common = ["--num-classes", "2", *RANGE, "--out", str(tmp_path / "afile" / "x")]
    with caplog.at_level(logging.ERROR):
        assert (
            segmentation.main(["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")] + common)
            == 2
        )
        aug = [f"--{k}-{v}" for k in ("train", "synth", "test") for v in ("images", "labels")]
        paths = [x for flag in aug for x in (flag, str(tmp_path / ("img" if flag.endswith("images") else "lab")))]
        assert segmentation.main(["augment", *paths, *common]) == 2
    assert caplog.text.count("existing file, not a folder") == 2


def test_prediction_names_from_files_are_checked_before_inference(tmp_path, nifti, volume, monkeypatch, caplog):
    label = (volume(1) > 0).astype(np.int16)
    for folder in ("train", "test"):
        nifti(tmp_path / folder / "images" / "c1.nii.gz", volume(1))
        nifti(tmp_path / folder / "labels" / "c1.nii.gz", label)
    fit = ["--num-classes", "2", "--channels", "4", "8", "--steps", "2", "--no-progress", *RANGE]
    model = tmp_path / "seg.pt"
    train = ["train", "--images", str(tmp_path / "train/images"), "--labels", str(tmp_path / "train/labels")]
    assert segmentation.main([*train, *fit, "--out", str(model)]) == 0
    evaluate = ["evaluate", "--model", str(model), "--labels", str(tmp_path / "test/labels")]
    evaluate += ["--real", str(tmp_path / "test/images"), *RANGE, "--predictions", str(tmp_path / "pred")]
    assert segmentation.main([*evaluate, "--out", str(tmp_path / "d.json")]) == 0
    pred = tmp_path / "pred" / "real" / "c1.nii.gz"
    assert pred.is_file()
    assert json.loads((tmp_path / "d.json").read_text())["predictions"]["real"] == [str(pred)]
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["outputs"] == ["real/c1.nii.gz"]
    # --overwrite replaces the predictions the record lists, not a foreign file in their place
    assert segmentation.main([*evaluate, "--out", str(tmp_path / "d.json"), "--overwrite"]) == 0
    (tmp_path / "pred" / "predictions.json").unlink()
    with caplog.at_level(logging.ERROR):
        assert segmentation.main([*evaluate, "--out", str(tmp_path / "d.json"), "--overwrite"]) == 2
    assert "not written by this project" in caplog.text
    # a file name that is no safe output name (a space here) is refused before any inference
    for folder in ("images", "labels"):
        (tmp_path / "test" / folder / "c1.nii.gz").rename(tmp_path / "test" / folder / "c 1.nii.gz")
    monkeypatch.setattr(segmenter, "predict", lambda *a: pytest.fail("inference before the name check"))
    with caplog.at_level(logging.ERROR):
        assert segmentation.main([*evaluate, "--out", str(tmp_path / "e.json")]) == 2
    assert "'c 1' cannot be used as a file name" in caplog.text and not (tmp_path / "e.json").exists()
    # the checkpoint is ours, so --overwrite may replace it; a foreign file of that name is kept
    (tmp_path / "foreign.pt").write_text("someone's notes")
    with caplog.at_level(logging.ERROR):
        assert segmentation.main([*train, *fit, "--out", str(tmp_path / "foreign.pt"), "--overwrite"]) == 2
    assert (tmp_path / "foreign.pt").read_text() == "someone's notes"


def test_default_metrics_skip_absent_weights_and_asked_ones_say_how_to_fetch(unit_folders, monkeypatch, caplog):
    root, _ = unit_folders
    monkeypatch.setenv("TORCH_HOME", str(root / "empty_torch_home"))
    with caplog.at_level(logging.WARNING):
        assert compute_metrics.main(_args(root, "d.json", "--data-range", "0", "1", "--no-progress")) == 0
    report = json.loads((root / "d.json").read_text())
    assert set(report["metrics"]) == {"psnr", "rmse", "ssim", "ssim2d", "msssim"}
    assert set(report["skipped_metrics"]) == {"lpips", "fid", "fid3d"}
    assert "python scripts/fetch_weights.py --only fid3d" in report["skipped_metrics"]["fid3d"]
    assert "skipping lpips" in caplog.text
    md = (root / "d.md").read_text()
    assert "not computed: lpips" in md and "## Settings that change a value" in md
    assert "- data range (real): [0, 1] from the command line" in md and "MS-SSIM per shape: 16x16x16" in md
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert compute_metrics.main(_args(root, "e.json", "--metrics", "lpips", "--data-range", "0", "1")) == 2
    assert "`python scripts/fetch_weights.py --only lpips`" in caplog.text
    with caplog.at_level(logging.ERROR):
        args = _args(root, "e.json", "--metrics", "fid", "--weights-dir", str(root / "w"), "--data-range", "0", "1")
        assert compute_metrics.main(args) == 2
    assert f"python scripts/fetch_weights.py --only fid --dest {root / 'w'}" in caplog.text


def test_medicalnet_input_convention_known_answers():
    gen = torch.Generator().manual_seed(0)
    vol = torch.rand(6, 7, 8, generator=gen)  # (D, H, W)
    vol[:2] = 0.0  # background
    x = network_input(vol, "medicalnet")
    assert x.shape == (7, 8, 6)  # nibabel (I, J, K) = (H, W, D)
    fg = vol.permute(1, 2, 0) > 0
    assert float(x[fg].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(x[fg].std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert torch.all(x[~fg] == 0)
    # the z-score does not depend on the linear map to [0, 1] (any stated range gives the same input)
    assert torch.allclose(network_input(vol * 0.5, "medicalnet"), x, atol=1e-5)
    assert torch.equal(network_input(vol, "project"), vol)
    with pytest.raises(DataError, match="z-score is undefined"):
        network_input(torch.zeros(4, 4, 4), "medicalnet", "empty.nii.gz")
    net, record = build_medicalnet(None, random_weights=True)
    a, b = volume_features(net, vol, "project"), volume_features(net, vol, "medicalnet")
    assert a.shape == b.shape == (1, 2048) and not torch.allclose(a, b)
    assert set(record["input_conventions"]) == {"project", "medicalnet"}


def test_fid3d_convention_is_reported(unit_folders):
    root, _ = unit_folders
    args = _args(root, "f.json", "--metrics", "fid3d", "--random-weights", "--fid3d-convention", "medicalnet")
    assert compute_metrics.main([*args, "--data-range", "0", "1", "--no-progress"]) == 0
    report = json.loads((root / "f.json").read_text())
    assert (
        report["metrics"]["fid3d"]["input_convention"] == "medicalnet" and report["fid3d_convention"] == "medicalnet"
    )
    assert "input convention `medicalnet`" in (root / "f.md").read_text()


def test_ranges_recorded_by_the_real_writers(tmp_path, nifti):
    """The fields evaluation reads are the ones preprocessing and generation write (no guessing between teams)."""
    from dataset.label_table import load_label_table
    from dataset.preprocess import Case, PreprocessOptions, preprocess
    from diffusion.generation.pipeline import RECORD_NAME, output_units

    raw = tmp_path / "raw"
    hu = np.linspace(-1200, 1500, 8 * 8 * 6).reshape(6, 8, 8).astype(np.float32)  # (D, H, W)
    image = nifti(raw / "p1_0001.nii.gz", hu)
    label = nifti(raw / "p1_0002.nii.gz", (hu > 0).astype(np.uint8))
    opts = PreprocessOptions(
        block_size=(6, 8, 8), val_frac=0.0, test_frac=0.0, progress=False, intensity={"kind": "ct_window"}
    )
    table = load_label_table("autopet")
    manifest = preprocess("autopet", [Case("p1", "p1", image, label)], tmp_path / "dst", table, opts)
    images = (tmp_path / "dst" / manifest["entries"][0]["image"]).parent
    lo, hi, source = recorded_range(images)
    assert (lo, hi) == (-1.0, 1.0) and source.endswith("manifest.json (images_normalized)")
    # generation: HU within the window for ct_window datasets, the model's scale otherwise
    out = tmp_path / "gen"
    out.mkdir()
    write_run_record(out / RECORD_NAME, {"outputs": [], **output_units({"kind": "ct_window", "hu_max": 400})})
    assert recorded_range(out)[:2] == (-1000.0, 400.0)
    write_run_record(out / RECORD_NAME, {"outputs": [], **output_units({"kind": "percentile"})})
    assert recorded_range(out)[:2] == (-1.0, 1.0)
