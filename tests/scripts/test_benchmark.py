"""scripts/benchmark.py: a quick end-to-end run, the report contract, the growth fit, and the fast paths it times.

The fast paths the benchmark measures are real options (``trainer.precision``, ``model.compile``, ``generate.py
--precision / --compile``); here they are checked to give the fp32 / eager result within the benchmark's own
tolerances. Nothing here asserts a time: performance is measured by the script, never by tests (SPEC §9).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dataset.contract import one_hot
from diffusion.denoisers import build_denoiser
from diffusion.first_stage import architecture_hparams
from diffusion.generation.pipeline import GenerationSettings, LabelVolume, generate
from diffusion.module import LatentDiffusionModule
from scripts import benchmark
from scripts.generate import load_model
from scripts.generate import parse_args as generate_args
from vq_gan_3d.module import VQGANModule

SYNTHETIC_NC = 4  # config/dataset/synthetic.yaml
DENOISER = {
    "dim": 8,
    "dim_mults": [1],
    "attn_heads": 2,
    "attn_dim_head": 8,
    "label_channels": 4,
    "label_hidden": [4],
    "spade_hidden": 8,
}


def _tiny_model(objective: str = "ddpm", **kwargs: object) -> LatentDiffusionModule:
    """An untrained 16^3 model (VQ-GAN factor 2, 4 latent channels) on the in-memory synthetic dataset."""
    with initialize_config_dir(config_dir=str(benchmark.CONFIG_DIR), version_base="1.3"):
        cfg = compose("diffusion", overrides=["dataset=synthetic", "model.first_stage_ckpt=null"])
    torch.manual_seed(0)
    vq = VQGANModule(
        label_nc=SYNTHETIC_NC, n_hiddens=8, downsample=[2, 2, 2], embedding_dim=4, n_codes=32, num_groups=4,
        perceptual_weight=0.0, inference_only=True,
    )  # fmt: skip
    rflow = (
        {"objective": "rflow", "prediction_type": "v_prediction", "sampler": "rflow"} if objective == "rflow" else {}
    )
    model = LatentDiffusionModule(
        label_nc=SYNTHETIC_NC, first_stage_hparams=architecture_hparams(vq), block_size=[16, 16, 16],
        data_info=OmegaConf.to_container(cfg.dataset, resolve=True), denoiser_kwargs=DENOISER,
        num_train_timesteps=20, sample_steps=2, guidance=1.5, **rflow, **kwargs,
    )  # fmt: skip
    model.latent_norm.fit_std([model.first_stage.encode(torch.rand(2, 1, 16, 16, 16) * 2 - 1)])
    return model.eval()


def _save(model: LatentDiffusionModule, path: Path) -> Path:
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "pytorch-lightning_version": pl.__version__},
        path,
    )  # fmt: skip
    return path


# ------------------------------------------------------------------------------------------------ helpers
def test_fit_power_law_recovers_a_known_exponent() -> None:
    x = np.array([4096.0, 32768.0, 262144.0, 2097152.0])
    exact = benchmark.fit_power_law(x, 3.0 * x**1.5)
    assert exact["exponent"] == pytest.approx(1.5, abs=1e-9)
    assert exact["coefficient"] == pytest.approx(3.0, rel=1e-6)
    assert exact["r2"] == pytest.approx(1.0) and exact["points"] == 4
    noisy = 0.02 * x**1.2 * np.exp(np.random.default_rng(0).normal(0.0, 0.02, x.size))
    assert benchmark.fit_power_law(x, noisy)["exponent"] == pytest.approx(1.2, abs=0.03)


@pytest.mark.parametrize(
    ("x", "y"), [([1.0], [1.0]), ([1.0, 2.0], [0.0, 1.0]), ([2.0, 2.0], [1.0, 3.0])], ids=["one", "zero", "same-x"]
)
def test_fit_power_law_rejects_unusable_data(x: list[float], y: list[float]) -> None:
    with pytest.raises(ValueError):
        benchmark.fit_power_law(x, y)


def test_parsers() -> None:
    assert benchmark.parse_size("16") == (16, 16, 16)
    assert benchmark.parse_size("32x256x256") == (32, 256, 256)
    assert benchmark.parse_sampler("ddpm") == ("ddpm", None)
    assert benchmark.parse_sampler("ddim:50") == ("ddim", 50)
    for bad in ("ddpm:500", "euler:3", "ddim:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            benchmark.parse_sampler(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        benchmark.parse_size("16x16")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "bench.json"
    benchmark.atomic_write(target, "one")
    benchmark.atomic_write(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]


def test_existing_report_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text("keep")
    assert benchmark.main(["--device", "cpu", "--quick", "--out", str(out)]) == 2
    assert out.read_text() == "keep" and not out.with_suffix(".md").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run at 16^3: two models, 1 warm-up + 1 repeat, generation on 8^3 blocks, profiles."""
    root = tmp_path_factory.mktemp("bench")
    out = root / "bench.json"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--models", "vqgan_spade_tiny", "diffusion_tiny",
        "--sizes", "16", "--warmup", "1", "--repeats", "1", "--gen-block", "8", "--gen-steps", "1",
        "--profile", str(root / "prof"),
    ]  # fmt: skip
    rc = benchmark.main(argv)
    return {"rc": rc, "out": out, "root": root, "report": json.loads(out.read_text()) if out.exists() else None}


@pytest.mark.slow  # the whole --quick run: ~25 s, kept out of the 5-minute default suite
def test_quick_run_writes_the_report(quick: dict) -> None:
    assert quick["rc"] == 0
    report = quick["report"]
    assert report["schema"] == benchmark.SCHEMA
    for key in ("machine", "versions", "settings", "training", "sampling", "generation", "profiles", "total_time_s"):
        assert key in report, key
    for key in ("cpu_model", "cpu_count", "ram_total_mb", "torch_threads", "gpu"):
        assert key in report["machine"], key
    for key in ("python", "torch", "pytorch_lightning", "monai"):
        assert report["versions"][key], key
    assert report["settings"]["quick"] is True and report["settings"]["repeats"] == 1


@pytest.mark.slow  # the whole --quick run: ~25 s, kept out of the 5-minute default suite
def test_quick_run_training_rows(quick: dict) -> None:
    training = quick["report"]["training"]
    rows = {r["model"]: r for r in training["results"]}
    assert set(rows) == {"vqgan_spade_tiny", "diffusion_tiny"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["step_time_s"]["median"] > 0 and row["step_time_s"]["n"] == 1
        assert row["memory"]["peak_mb"] >= row["memory"]["baseline_mb"] > 0
    assert rows["diffusion_tiny"]["latent"] == "8x4x4x4"
    fast = {(r["model"], r["option"]): r for r in training["fast_paths"]}
    for model in rows:
        bf16 = fast[(model, "trainer.precision=bf16-mixed")]
        assert bf16["status"] == "ok" and bf16["equal_within_tolerance"] is True, bf16
    assert fast[("vqgan_spade_tiny", "model.compile=true")]["status"] == "not applicable"
    assert fast[("diffusion_tiny", "model.compile=true")]["status"] == "skipped"  # --quick: no cold compile


@pytest.mark.slow  # the whole --quick run: ~25 s, kept out of the 5-minute default suite
def test_quick_run_generation_and_fit(quick: dict) -> None:
    gen = quick["report"]["generation"]
    assert gen["status"] == "ok"
    sizes = [r for r in gen["results"] if r["status"] == "ok"]
    assert [r["size"] for r in sizes] == ["8x8x8", "8x8x16", "8x16x16", "16x16x16"]
    assert [r["windows"] for r in sizes] == [1, 3, 9, 27]
    fit = gen["fit"]
    assert fit["status"] == "ok" and fit["sizes"] == 4
    assert 0.5 < fit["time_vs_voxels"]["exponent"] < 3.0
    assert gen["full_size"] == "16x16x16"
    bf16 = next(r for r in gen["fast_paths"] if r["option"] == "--precision bf16")
    assert bf16["status"] == "ok" and bf16["equal_within_tolerance"] is True


@pytest.mark.slow  # the whole --quick run: ~25 s, kept out of the 5-minute default suite
def test_quick_run_skips_sampling_without_checkpoint_and_writes_markdown(quick: dict) -> None:
    report = quick["report"]
    assert report["sampling"]["status"] == "skipped" and "--ckpt" in report["sampling"]["reason"]
    md = quick["out"].with_suffix(".md").read_text()
    for heading in ("# Med-LSDM benchmark", "## Training step", "## Sampling", "## Block-wise generation",
                    "time ~ voxels^", "## Profiles"):  # fmt: skip
        assert heading in md, heading
    names = {p["name"] for p in report["profiles"]}
    assert {"train_vqgan_spade_tiny_16x16x16", "train_diffusion_tiny_16x16x16"} <= names
    assert any(n.startswith("sample_step_") for n in names)
    for p in report["profiles"]:
        assert Path(p["table"]).is_file() and p["top_ops"]


# ------------------------------------------------------------------------------------------------ sampling section
def test_sampling_section_on_ddpm_and_rflow_checkpoints(tmp_path: Path) -> None:
    eps = _save(_tiny_model(), tmp_path / "eps.ckpt")
    rflow = _save(_tiny_model("rflow"), tmp_path / "rflow.ckpt")
    out = tmp_path / "bench.json"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--skip", "training", "generation", "--ckpt", str(eps),
        "--rflow-ckpt", str(rflow), "--samplers", "ddpm", "ddim:2", "rflow:2", "--sample-volumes", "1",
    ]  # fmt: skip
    assert benchmark.main(argv) == 0
    sampling = json.loads(out.read_text())["sampling"]
    rows = {(r["checkpoint"], r["sampler"]): r for r in sampling["results"]}
    for key in (("ckpt", "ddpm"), ("ckpt", "ddim"), ("rflow_ckpt", "rflow")):
        row = rows[key]
        assert row["status"] == "ok", row
        assert 0.0 < row["time_per_volume_s"]["median"] and -1.0 <= row["ssim"] <= 1.0 and row["psnr"] > 0
    assert rows[("ckpt", "ddpm")]["steps"] == 20 and rows[("ckpt", "ddpm")]["speedup_vs_ddpm"] == 1.0
    assert (
        rows[("ckpt", "rflow")]["status"] == "not applicable" and "--rflow-ckpt" in rows[("ckpt", "rflow")]["reason"]
    )
    assert rows[("rflow_ckpt", "ddim")]["status"] == "not applicable"
    assert sampling["checkpoints"]["ckpt"]["objective"] == "ddpm"
    assert "data range 1" in sampling["metric_convention"]


# ------------------------------------------------------------------------------------------------ fast paths
def test_bf16_autocast_matches_fp32_on_a_tiny_denoiser() -> None:
    net = build_denoiser("unet3d_spade", 4, 3, (2, 2, 2), DENOISER).eval()
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 40])
    seg = one_hot(torch.randint(0, 3, (2, 1, 8, 16, 16)), 3).float()
    with torch.no_grad():
        ref = net(x, t, seg)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t, seg)
    assert out.dtype == torch.bfloat16  # autocast really ran in bf16
    assert benchmark.relative_error(ref, out) <= benchmark.OUTPUT_RTOL["bf16-mixed"]


def test_generate_precision_bf16_matches_fp32(tmp_path: Path) -> None:
    model = _tiny_model()
    label = np.random.default_rng(0).integers(0, SYNTHETIC_NC, (16, 16, 32))
    vols = [LabelVolume("v", label, np.eye(4), "test")]
    images = {}
    for precision in ("32", "bf16"):
        settings = GenerationSettings(sampler="ddim", steps=2, precision=precision, resample=False)
        generate(model, vols, tmp_path / precision, settings, progress=False,
                 on_volume=lambda v, k, image, path, p=precision: images.__setitem__(p, image))  # fmt: skip
    diff = np.abs(images["32"].astype(np.float64) - images["bf16"].astype(np.float64))
    assert diff.mean() <= benchmark.IMAGE_ATOL["bf16"]


def test_compile_option_keeps_checkpoint_keys_and_reaches_generation(tmp_path: Path) -> None:
    plain, compiled = _tiny_model(), _tiny_model(compile=True)
    assert list(plain.state_dict()) == list(compiled.state_dict())  # no "_orig_mod." prefix
    assert getattr(compiled.denoiser, "_compiled_call_impl", None) is not None
    assert getattr(compiled.ema.module, "_compiled_call_impl", None) is not None
    assert getattr(plain.denoiser, "_compiled_call_impl", None) is None
    ckpt = _save(compiled, tmp_path / "compiled.ckpt")  # trained compiled, loads either way
    assert getattr(load_model(ckpt, torch.device("cpu")).denoiser, "_compiled_call_impl", None) is None
    loaded = load_model(ckpt, torch.device("cpu"), compile=True)
    assert getattr(loaded.ema.module, "_compiled_call_impl", None) is not None
    assert generate_args(["--ckpt", "c", "--labels", "l", "--out", "o", "--compile"]).compile is True
    with initialize_config_dir(config_dir=str(benchmark.CONFIG_DIR), version_base="1.3"):
        for name in ("diffusion", "diffusion_tiny", "diffusion_rflow", "diffusion_monai_spade"):
            assert compose("diffusion", overrides=[f"model={name}"]).model.compile is False, name


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_cxx(), reason="torch.compile (inductor) needs a C++ compiler on the CPU")
def test_compile_matches_eager_training_forward_and_backward() -> None:
    """The real option (model.compile=true, inductor): compiled vs eager denoiser, outputs and gradients.

    Slow: a cold inductor compile of even this tiny denoiser takes minutes on one CPU thread.
    """
    model = _tiny_model(compile=True).train()
    batch = {
        "image": torch.rand(1, 1, 16, 16, 16) * 2 - 1,
        "label": torch.randint(0, SYNTHETIC_NC, (1, 1, 16, 16, 16)),
    }
    grads = []
    outs = []
    for eager in (True, False):
        model.denoiser.zero_grad()
        (out,) = benchmark.forward_outputs(model, "diffusion", batch, eager=eager)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.denoiser.parameters() if p.grad is not None]))
    assert benchmark.relative_error(outs[0], outs[1]) <= benchmark.OUTPUT_RTOL["compile"]
    assert benchmark.relative_error(grads[0], grads[1]) <= 1e-3
