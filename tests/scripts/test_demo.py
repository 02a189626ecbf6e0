"""The README's first command, end to end with tiny budgets: train both stages, generate, evaluate, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [
        sys.executable, "scripts/demo.py", "--out", str(out), "--vqgan-steps", "16", "--diffusion-steps", "8",
        "--steps", "3", "--seg-steps", "10",
        "--label-ae-steps", "16", "--label-diffusion-steps", "8", "--label-maps", "4", "--utility-steps", "2",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]

    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    test_ids = sorted(p.name[: -len(".nii.gz")] for p in (out / "data" / "test" / "labels").glob("*.nii.gz"))
    assert len(test_ids) == 4  # the embedded dataset's held-out subjects
    assert sorted(p.name for p in (out / "synthetic").glob("*.nii.gz")) == [f"{i}_s0.nii.gz" for i in test_ids]
    text = json.dumps(metrics)
    for name in ("psnr", "ssim", "privacy"):
        assert name in text
    dice = json.loads((report / "dice.json").read_text())
    assert "real" in json.dumps(dice) and "synthetic" in json.dumps(dice)
    assert (report / "augment.json").is_file()
    # the edit of a real scan: outputs, the fidelity table and the preservation it measured
    assert (out / "edit" / "edited.nii.gz").is_file() and (out / "edit" / "montage.png").stat().st_size > 1000
    edit = json.loads((report / "edit.json").read_text())
    assert edit["preservation"]["max_abs_outside"] == 0.0 and edit["adherence"]["dice"]
    assert "Editing a real scan" in (report / "README.md").read_text()
    # the labels stage: new pairs with shared ids, the mask-quality and utility tables, pair montages
    assert len(list((out / "pairs" / "labels").glob("map*.nii.gz"))) == 4
    assert len(list((out / "pairs" / "images").glob("map*_s0.nii.gz"))) == 4
    assert (report / "labels.json").is_file() and (report / "utility.json").is_file()
    assert "Label-map quality" in (report / "README.md").read_text()
    for vid in test_ids:
        assert (report / f"{vid}_montage.png").stat().st_size > 1000
        assert (report / f"{vid}_synthetic.gif").is_file()
    readme = (report / "README.md").read_text()
    assert "python -m train.train_vqgan" in readme and "python -m scripts.generate" in readme

    # A second run refuses to replace the report.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    # The full utility protocol on top of it (tiny budgets): learning curve -> budget -> utility at that budget.
    util = tmp_path / "utility"
    protocol = [
        sys.executable, "scripts/utility_protocol.py", "--demo", str(out), "--out", str(util),
        "--label-ae-steps", "16", "--label-diffusion-steps", "8", "--pairs", "4", "--regimes", "1", "2",
        "--seeds", "0", "1", "--curve-steps", "4", "--eval-every", "2",
    ]  # fmt: skip
    proc = subprocess.run(protocol, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    curve = json.loads((util / "report" / "curve.json").read_text())
    utility = json.loads((util / "report" / "utility.json").read_text())
    assert utility["settings"]["steps"] == curve["results"]["budget"] in (2, 4)
    assert len(utility["results"]["runs"]) == 2 * 2 * 4
    assert len(list((util / "data" / "val" / "labels").glob("*.nii.gz"))) == 4  # the budget is chosen on val
    readme = (util / "report" / "README.md").read_text()
    assert "learning curve" in readme and "paired difference" in readme and "python -m evaluation.utility" in readme
    assert (util / "report" / "curve.png").stat().st_size > 1000


def test_overwrite_deletes_only_a_folder_a_demo_run_wrote(tmp_path: Path) -> None:
    """``--overwrite`` on a folder without the demo's run record is refused and the folder is left untouched."""
    from scripts import demo

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.nii.gz").write_bytes(b"precious")
    assert demo.main(["--out", str(foreign), "--overwrite"]) == 2
    assert (foreign / "thesis.nii.gz").read_bytes() == b"precious"

    (foreign / demo.DEMO_RECORD).write_text(json.dumps({"producer": "someone-else"}))
    assert demo.main(["--out", str(foreign), "--overwrite"]) == 2  # a record, but not ours
    assert (foreign / "thesis.nii.gz").is_file()


def test_utility_protocol_refuses_bad_input_before_work(tmp_path: Path) -> None:
    """Not a finished demo folder, too few pairs for the largest regime, a folder not ours: exit 2, nothing touched."""
    from scripts import utility_protocol

    out = tmp_path / "utility"
    assert utility_protocol.main(["--demo", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    demo_dir = tmp_path / "demo"
    for name in utility_protocol.check_demo(demo_dir):
        (demo_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (demo_dir / name).write_text("")
    assert utility_protocol.check_demo(demo_dir) == []
    assert utility_protocol.main(["--demo", str(demo_dir), "--out", str(out), "--pairs", "4", "--regimes", "8"]) == 2
    assert utility_protocol.main(["--demo", str(demo_dir), "--out", str(out), "--steps", "0"]) == 2
    assert not out.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.nii.gz").write_bytes(b"precious")
    assert utility_protocol.main(["--demo", str(demo_dir), "--out", str(foreign), "--overwrite"]) == 2
    assert (foreign / "thesis.nii.gz").read_bytes() == b"precious"


def test_ct_abdomen_is_exported_in_hu_and_drawn_in_the_soft_tissue_window(tmp_path: Path, monkeypatch) -> None:
    """``--dataset ct_abdomen``: its experiments exist, test images are written in HU with a record saying so, and
    the figures use the config's W400/L40 window (mni152 keeps the model's [-1, 1])."""
    import hashlib

    import nibabel as nib
    import numpy as np

    from dataset import ct_abdomen
    from dataset.ct_abdomen import CTAbdomenDataset
    from evaluation.export import export_config_split
    from evaluation.intensity import recorded_range
    from scripts import demo
    from scripts.demo_report import figure_window
    from tests.dataset.ct_archive import write_archive
    from train.stages import dataset_config

    assert demo.parse_args(["--dataset", "ct_abdomen"]).dataset == "ct_abdomen"
    for stage in ("vqgan", "vqgan_spade", "diffusion", "labels_ae", "labels_diffusion"):
        assert (REPO / "config" / "experiment" / f"ct_abdomen_{stage}_cpu.yaml").is_file()
    archive = write_archive(tmp_path / "totalsegmentator-2.18.0.tar.gz", depth=26)
    monkeypatch.setattr(ct_abdomen, "ARCHIVE_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    data_dir = tmp_path / "cache"
    CTAbdomenDataset("all", data_dir / "ct_abdomen", source=str(archive), size=(24, 48, 40))  # the config's block
    cfg = dataset_config(data_dir, "ct_abdomen")
    ids = export_config_split(cfg, tmp_path / "test", "test")
    assert len(ids) == 4
    hu = np.asarray(nib.load(tmp_path / "test" / "images" / f"{ids[0]}.nii.gz").dataobj)
    assert hu.min() >= -1000.0 and hu.max() <= 1000.0 and hu.min() < -900.0  # air in HU, not -1
    assert recorded_range(tmp_path / "test" / "images")[:2] == (-1000.0, 1000.0)
    assert figure_window(cfg) == (-160.0, 240.0)
    assert figure_window(dataset_config(data_dir, "mni152")) == (-1.0, 1.0)
