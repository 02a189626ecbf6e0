"""The own-data path of the README, end to end on the CPU, from a folder this test creates.

inspect_dataset -> stage 1 (nifti_pairs_vqgan_cpu) -> stage 2 (nifti_pairs_diffusion_cpu) -> generate (with the
real test images exported) -> compute_metrics, as a user pastes them: subprocesses, a dataset config of the user's
own in ``my_configs/`` (``--config-dir``), tiny step counts. The data: raw CT in HU (int16, air -1024, bone
1500), odd sizes (none divisible by 8), anisotropic 0.9 x 1.3 x 2.5 mm voxels, a flat images/labels folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.scripts.own_data import write_own_ct_folder

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def _run(args: list[str], cwd: Path, timings: dict[str, float], name: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    timings[name] = time.monotonic() - t0
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_own_ct_folder_to_metrics_table(tmp_path: Path) -> None:
    data = tmp_path / "mydata_raw"
    write_own_ct_folder(data, n_cases=10)  # flat layout: seeded split 8 train / 1 val / 1 test
    timings: dict[str, float] = {}
    (tmp_path / "my_configs" / "dataset").mkdir(parents=True)
    cfg_path = tmp_path / "my_configs" / "dataset" / "mydata.yaml"

    # 1. inspect the folder once; the printed config is the dataset config
    _run([str(REPO / "scripts/inspect_dataset.py"), str(data), "--out", str(cfg_path)], tmp_path, timings, "inspect")
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["intensity"]["kind"] == "ct_window" and cfg["block_size"] == [12, 16, 16] and cfg["label_nc"] == 4

    # 2. stage 1 and 3. stage 2, both reading the same dataset config by name
    common = ["--config-dir", "my_configs", "dataset=mydata", "trainer.check_val_every_n_epoch=1"]
    run1, run2 = tmp_path / "runs" / "vqgan", tmp_path / "runs" / "diffusion"
    out1 = _run(
        [str(REPO / "train/train_vqgan.py"), *common, "experiment=nifti_pairs_vqgan_cpu", "trainer.max_steps=16",
         f"paths.output_dir={run1}"], tmp_path, timings, "stage1",
    )  # fmt: skip
    out2 = _run(
        [str(REPO / "train/train_diffusion.py"), *common, "experiment=nifti_pairs_diffusion_cpu",
         f"model.first_stage_ckpt={run1}/checkpoints/last.ckpt", "trainer.max_steps=6",
         f"paths.output_dir={run2}"], tmp_path, timings, "stage2",
    )  # fmt: skip
    for out, run in ((out1, run1), (out2, run2)):
        assert "validation step" in out and "psnr" in out  # one line per validation
        assert "best val/" in out and f"checkpoints in {run / 'checkpoints'}" in out  # the summary
        assert "Tip:" not in out and "smaller than the logging interval" not in out
        assert "8 of 8 volumes are padded to block_size 12x16x16" in out  # padding is logged, not hidden
        assert "intensity ct_window" in out and "no resampling" in out
        assert (run / "curves_val.png").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert "module(s) in eval mode" not in out2  # the frozen first stage's notice

    # 4. generate for the test split, exporting its real images; 5. the metrics table
    gen, real = tmp_path / "synthetic", tmp_path / "real"
    _run(
        [str(REPO / "scripts/generate.py"), "--ckpt", str(run2 / "checkpoints" / "last.ckpt"), "--labels",
         "split=test", "--out", str(gen), "--steps", "2", "--export-real", str(real), "--png"], tmp_path, timings,
        "generate",
    )  # fmt: skip
    assert len(list(gen.glob("*_s0.nii.gz"))) == 1 and (gen / "case04_s0.png").is_file()
    report = tmp_path / "metrics" / "metrics.json"
    _run(
        ["-m", "evaluation.compute_metrics", "--real", str(real), "--fake", str(gen), "--out", str(report)],
        REPO, timings, "metrics",
    )  # fmt: skip
    result = json.loads(report.read_text())
    assert "psnr" in json.dumps(result) and (tmp_path / "metrics" / "metrics.md").is_file()
    log.warning("own-data path timings (s): %s, total %.0f", {k: round(v) for k, v in timings.items()},
                sum(timings.values()))  # fmt: skip
