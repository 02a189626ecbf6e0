"""scripts/gpu_check.py at tiny size on the CPU: the code the GPU day will run, kept from rotting, on the shared
option / error / output-folder layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.gpu_check import RECORD, main


def test_gpu_check_tiny_runs_every_part_and_reports_the_device(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    argv = ["--tiny", "--device", "cpu", "--no-compile", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / RECORD).read_text())
    assert report["device"] == "cpu" and report["tiny"] and "cpu_model" in report["machine"]
    assert report["tool"] == "gpu_check" and report["outputs"] == [RECORD]
    rows = [r for part in ("vqgan", "denoiser", "generation") for r in report[part]]
    failed = [r for r in rows if r["status"] != "ok"]
    assert not failed, failed
    vq = report["vqgan"]
    assert {(r["config"], r["checkpointing"]) for r in vq} == {
        (c, k) for c in ("vq_gan_3d_tiny", "vq_gan_spade_tiny") for k in (False, True)
    }
    assert all(r["step_s"]["n"] == 1 and r["memory"]["peak_mb"] > 0 for r in vq + report["denoiser"])
    assert report["denoiser"][0]["latent"] == "8x4x4x4"  # 16^3 through the [4, 4, 4] tiny VQ-GAN, 8 channels
    gen = {r["model"]: r for r in report["generation"]}
    assert (gen["teacher"]["steps"], gen["teacher"]["passes_per_step"]) == (30, 2)
    assert (gen["student"]["steps"], gen["student"]["passes_per_step"]) == (4, 1)
    for r in gen.values():
        assert r["label_nc"] == 37 and 0 < r["denoise_s"] and 0 < r["decode_s"]
        assert r["denoise_s"] + r["decode_s"] <= r["seconds"]
    assert gen["student"]["denoise_s"] < gen["teacher"]["denoise_s"]  # 4 single passes vs 30 double ones
    assert main(argv) == 2  # the report exists: --overwrite replaces it
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite", "--parts", "denoiser"]) == 0 and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "extra", [["--device", "cuda:99"], ["--device", "meta"], ["--repeats", "0"], ["--warmup", "x"]]
)
def test_gpu_check_refuses_bad_options_in_one_line(
    extra: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--tiny", "--out", str(tmp_path / "gpu"), *extra]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] + capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and "Traceback" not in errors[0], errors
    assert not (tmp_path / "gpu").exists()
