"""scripts/gpu_check.py at tiny size on the CPU: the code the GPU day will run, kept from rotting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_gpu_check_tiny_runs_every_part_and_reports_the_device(tmp_path: Path) -> None:
    from scripts.gpu_check import main

    out = tmp_path / "gpu.json"
    argv = ["--tiny", "--device", "cpu", "--no-compile", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["tiny"] and "cpu_model" in report["machine"]
    rows = [r for part in ("vqgan", "denoiser", "generation") for r in report[part]]
    failed = [r for r in rows if r["status"] != "ok"]
    assert not failed, failed
    vq = report["vqgan"]
    assert {(r["config"], r["checkpointing"]) for r in vq} == {
        (c, k) for c in ("vq_gan_3d_tiny", "vq_gan_spade_tiny") for k in (False, True)
    }
    assert all(r["step_s"]["n"] == 1 and r["memory"]["peak_mb"] > 0 for r in vq + report["denoiser"])
    gen = {r["model"]: r for r in report["generation"]}
    assert (gen["teacher"]["steps"], gen["teacher"]["passes_per_step"]) == (30, 2)
    assert (gen["student"]["steps"], gen["student"]["passes_per_step"]) == (4, 1)
    for r in gen.values():
        assert r["label_nc"] == 37 and 0 < r["denoise_s"] and 0 < r["decode_s"]
        assert r["denoise_s"] + r["decode_s"] <= r["seconds"]
    assert gen["student"]["denoise_s"] < gen["teacher"]["denoise_s"]  # 4 single passes vs 30 double ones


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from scripts.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err
