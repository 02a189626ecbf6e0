"""scripts/benchmark.py and the scripts/bench package: the report contract, the helpers with known answers, the
Trainer composed from config/trainer, the before/after switches, checkpoint data never building code, and the
fast paths it times.

The fast paths the benchmark measures are real options (``trainer.precision``, ``model.compile``, ``generate.py
--precision / --compile``); here they are checked to give the fp32 / eager result within the benchmark's own
tolerances. Nothing here asserts a time: performance is measured by the script, never by tests (SPEC §9).
"""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dataset.contract import DataError, one_hot
from diffusion.denoiser_factory import build_denoiser
from diffusion.first_stage import architecture_hparams
from diffusion.generation.pipeline import GenerationSettings, LabelVolume, generate
from diffusion.module import LatentDiffusionModule
from scripts.bench import ab_generation, ab_sampling, ab_training, build, cli, common, memchild, report, switches
from scripts.bench.args import parse_args
from scripts.bench.fastpaths import forward_outputs
from scripts.bench.sampling import real_volumes
from scripts.generate import load_model
from scripts.generate import parse_args as generate_args
from vq_gan_3d.module import VQGANModule
from vq_gan_3d.spade import SPADE

REPO = Path(__file__).resolve().parents[2]
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
    with initialize_config_dir(config_dir=str(build.CONFIG_DIR), version_base="1.3"):
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
    exact = common.fit_power_law(x, 3.0 * x**1.5)
    assert exact["exponent"] == pytest.approx(1.5, abs=1e-9)
    assert exact["coefficient"] == pytest.approx(3.0, rel=1e-6)
    assert exact["r2"] == pytest.approx(1.0) and exact["points"] == 4
    noisy = 0.02 * x**1.2 * np.exp(np.random.default_rng(0).normal(0.0, 0.02, x.size))
    assert common.fit_power_law(x, noisy)["exponent"] == pytest.approx(1.2, abs=0.03)


@pytest.mark.parametrize(
    ("x", "y"), [([1.0], [1.0]), ([1.0, 2.0], [0.0, 1.0]), ([2.0, 2.0], [1.0, 3.0])], ids=["one", "zero", "same-x"]
)
def test_fit_power_law_rejects_unusable_data(x: list[float], y: list[float]) -> None:
    with pytest.raises(ValueError):
        common.fit_power_law(x, y)


def test_parsers() -> None:
    assert common.parse_size("16") == (16, 16, 16)
    assert common.parse_size("32x256x256") == (32, 256, 256)
    assert common.parse_sampler("ddpm") == ("ddpm", None)
    assert common.parse_sampler("ddim:50") == ("ddim", 50)
    for bad in ("ddpm:500", "euler:3", "ddim:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.parse_sampler(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        common.parse_size("16x16")


def test_overwrite_replaces_only_a_benchmark_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text('{"not": "ours"}')
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--overwrite", "--skip", *cli_sections()]
    assert cli.main(argv) == 2  # someone else's JSON is never replaced
    assert out.read_text() == '{"not": "ours"}'
    out.write_text(json.dumps({"schema": "med-lsdm-benchmark/1"}))  # a report of the previous version is ours
    assert cli.main(argv) == 0
    report_data = json.loads(out.read_text())
    assert report_data["schema"] == common.SCHEMA
    assert report_data["machine"]["cpu_count"] >= 1 and report_data["machine"]["date"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def cli_sections() -> list[str]:
    return ["before_after", "training", "sampling", "generation"]


def test_existing_report_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text("keep")
    assert cli.main(["--device", "cpu", "--quick", "--out", str(out)]) == 2
    assert out.read_text() == "keep" and not out.with_suffix(".md").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run at 16^3: two models, 1 warm-up + 1 repeat, generation on 8^3 blocks, profiles, and the
    before/after section on the tiny SPADE VQ-GAN (three memory children)."""
    root = tmp_path_factory.mktemp("bench")
    out = root / "bench.json"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--models", "vqgan_spade_tiny", "diffusion_tiny",
        "--sizes", "16", "--warmup", "1", "--repeats", "1", "--gen-block", "8", "--gen-steps", "1",
        "--profile", str(root / "prof"), "--ab-models", "vqgan_spade_tiny", "--ab-size", "16", "--ab-rounds", "1",
        "--ab-memory-steps", "1", "--ab-sample-steps", "2", "--ab-gen-sizes", "8x8x16", "--ab-gen-steps", "1",
    ]  # fmt: skip
    rc = cli.main(argv)
    return {"rc": rc, "out": out, "root": root, "report": json.loads(out.read_text()) if out.exists() else None}


@pytest.mark.slow  # the whole --quick run (minutes), kept out of the 5-minute default suite
def test_quick_run_writes_the_report(quick: dict) -> None:
    assert quick["rc"] == 0
    report = quick["report"]
    assert report["schema"] == common.SCHEMA
    for key in ("machine", "versions", "settings", "training", "sampling", "generation", "profiles", "total_time_s"):
        assert key in report, key
    for key in ("cpu_model", "cpu_count", "ram_total_mb", "torch_threads", "gpu"):
        assert key in report["machine"], key
    for key in ("python", "torch", "pytorch_lightning", "monai"):
        assert report["versions"][key], key
    assert report["settings"]["quick"] is True and report["settings"]["repeats"] == 1


@pytest.mark.slow  # the whole --quick run (minutes), kept out of the 5-minute default suite
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


@pytest.mark.slow  # the whole --quick run (minutes), kept out of the 5-minute default suite
def test_quick_run_generation_and_fit(quick: dict) -> None:
    gen = quick["report"]["generation"]
    assert gen["status"] == "ok"
    sizes = [r for r in gen["results"] if r["status"] == "ok"]
    assert [r["size"] for r in sizes] == ["8x8x8", "8x8x16", "8x16x16", "16x16x16"]
    windows = [r["windows"] for r in sizes]
    assert windows[0] == 1 and windows == sorted(windows) and windows[-1] > 1  # more windows only as it grows
    fit = gen["fit"]
    assert fit["status"] == "ok" and fit["sizes"] == 4
    assert 0.0 < fit["time_vs_voxels"]["exponent"] < 3.0
    assert gen["full_size"] == "16x16x16"
    bf16 = next(r for r in gen["fast_paths"] if r["option"] == "--precision bf16")
    assert bf16["status"] == "ok" and bf16["equal_within_tolerance"] is True


@pytest.mark.slow  # the whole --quick run (minutes), kept out of the 5-minute default suite
def test_quick_run_skips_sampling_without_checkpoint_and_writes_markdown(quick: dict) -> None:
    report = quick["report"]
    assert report["sampling"]["status"] == "skipped" and "--ckpt" in report["sampling"]["reason"]
    md = quick["out"].with_suffix(".md").read_text()
    for heading in ("# Med-LSDM benchmark", "## Before / after", "## Training step", "## Sampling",
                    "## Block-wise generation", "time ~ voxels^", "## Profiles"):  # fmt: skip
        assert heading in md, heading
    names = {p["name"] for p in report["profiles"]}
    assert {"train_vqgan_spade_tiny_16x16x16", "train_diffusion_tiny_16x16x16"} <= names
    assert any(n.startswith("sample_step_") for n in names)
    for p in report["profiles"]:
        assert Path(p["table"]).is_file() and p["top_ops"]


@pytest.mark.slow  # the whole --quick run (minutes), kept out of the 5-minute default suite
def test_quick_run_before_after(quick: dict) -> None:
    ba = quick["report"]["before_after"]
    (entry,) = ba["training"]["models"]
    assert entry["status"] == "ok", entry
    assert set(entry["step_time_s"]) == set(switches.VARIANTS)
    assert "spade_lookup" in entry["differs"]["after"] and "checkpointing" in entry["differs"]["after + checkpointing"]
    for variant, mem in entry["memory"].items():
        assert mem["status"] == "ok" and mem["peak_mb"] >= mem["rss_before_fit_mb"] > 0, variant
        assert mem["process_peak_rss_mb"] >= 0.9 * mem["peak_mb"], variant  # VmHWM and ru_maxrss count alike
    assert entry["ratios"]["time after"] > 0 and entry["ratios"]["peak memory after + checkpointing"] > 0
    assert max(entry["max_rel_output_diff_vs_before"].values()) < 1e-4  # same weights, same outputs
    sampling = ba["sampling"]
    assert sampling["status"] == "ok" and sampling["bit_identical"] is True and sampling["ratio"] > 0
    rows = [r for r in ba["generation"]["results"] if r["status"] == "ok"]
    assert {r["layout"] for r in rows} == {"block", "auto"}
    assert all(r["per_voxel_vs_block"] == 1.0 for r in rows if r["size"] == "8x8x8")
    assert all(r["seam_ratio"] is None or r["seam_ratio"] > 0 for r in rows)
    md = quick["out"].with_suffix(".md").read_text()
    assert "### VQ-GAN training step" in md and "Ratio cache / no cache" in md and "per voxel vs block" in md


# ------------------------------------------------------------------------------------------------ sampling section
def test_sampling_section_on_ddpm_and_rflow_checkpoints(tmp_path: Path) -> None:
    eps = _save(_tiny_model(), tmp_path / "eps.ckpt")
    rflow = _save(_tiny_model("rflow"), tmp_path / "rflow.ckpt")
    out = tmp_path / "bench.json"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--skip", "before_after", "training", "generation",
        "--ckpt", str(eps), "--rflow-ckpt", str(rflow), "--samplers", "ddpm", "ddim:2", "rflow:2",
        "--sample-volumes", "1",
    ]  # fmt: skip
    assert cli.main(argv) == 0
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
    assert common.relative_error(ref, out) <= common.OUTPUT_RTOL["bf16-mixed"]


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
    assert diff.mean() <= common.IMAGE_ATOL["bf16"]


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
    with initialize_config_dir(config_dir=str(build.CONFIG_DIR), version_base="1.3"):
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
        (out,) = forward_outputs(model, "diffusion", batch, eager=eager)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.denoiser.parameters() if p.grad is not None]))
    assert common.relative_error(outs[0], outs[1]) <= common.OUTPUT_RTOL["compile"]
    assert common.relative_error(grads[0], grads[1]) <= 1e-3


# ------------------------------------------------------------------------------------------------ the bench package
def test_entry_points_and_modules_stay_small(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``python scripts/benchmark.py`` and ``python -m scripts.benchmark`` run the same thin entry point (in this
    process through runpy: a fresh interpreter would spend its time importing torch)."""
    for run, target in (
        (runpy.run_path, str(REPO / "scripts" / "benchmark.py")),
        (runpy.run_module, "scripts.benchmark"),
    ):
        monkeypatch.setattr(sys, "argv", ["benchmark.py", "--help"])
        with pytest.raises(SystemExit) as err:
            run(target, run_name="__main__")
        assert err.value.code == 0
        text = capsys.readouterr().out
        assert "--ab-size" in text and "before_after" in text
    assert len((REPO / "scripts" / "benchmark.py").read_text().splitlines()) < 30
    for path in (REPO / "scripts" / "bench").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 250, path.name


def test_quick_defaults_and_bad_values() -> None:
    full, quick = parse_args(["--out", "x.json"]), parse_args(["--out", "x.json", "--quick"])
    assert full.ab_size == (32, 64, 64) and full.ab_models == ["vqgan_normal", "vqgan_spade"]
    assert quick.ab_models == ["vqgan_normal_tiny", "vqgan_spade_tiny"] and quick.repeats == 2
    assert full.ab_gen_sizes == [(32, 32, 32), (64, 64, 64), (64, 128, 128)] and full.ab_label_nc == 37
    with pytest.raises(SystemExit) as err:
        parse_args(["--out", "x.json", "--ab-rounds", "0"])
    assert err.value.code == 2


def test_trainer_is_composed_from_config_trainer(tmp_path: Path) -> None:
    trainer = build.build_trainer(torch.device("cpu"), "bf16-mixed", tmp_path, [])
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == 1 and trainer.logger is None and trainer.checkpoint_callback is None
    assert trainer.precision == "bf16-mixed" and trainer.default_root_dir == str(tmp_path)
    cfg = build.compose_config("vqgan", build.trainer_overrides(torch.device("cpu"), "32-true", tmp_path))
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_seam_ratio_known_answers() -> None:
    ramp = np.broadcast_to(np.arange(32.0)[:, None, None], (32, 32, 32))
    assert ab_generation.seam_ratio(ramp, (32, 32, 32)) == pytest.approx(1.0)  # an even gradient has no seam
    step = ramp + 5.0 * (np.arange(32) >= 16)[:, None, None]
    # across the edge plane 15|16: (1 + 5)^2 = 36; the 2 other edge planes (axes 1, 2) 0; the 90 other planes
    # hold 30 steps of 1: (36 / 3) / (30 / 90) = 36
    assert ab_generation.seam_ratio(step, (32, 32, 32)) == pytest.approx(36.0)
    assert ab_generation.seam_ratio(np.zeros((8, 8, 8)), (8, 8, 8)) is None  # constant: no defined ratio


def test_ratio_and_before_after_ratios() -> None:
    assert common.ratio(1.0, 2.0) == 0.5 and common.ratio(None, 2.0) is None and common.ratio(1.0, 0.0) is None
    entry = {
        "step_time_s": {v: {"median": t} for v, t in zip(switches.VARIANTS, (2.0, 1.0, 1.5))},
        "memory": {
            "before": {"status": "ok", "peak_mb": 1000.0, "rss_before_fit_mb": 600.0, "process_peak_rss_mb": 1000.0},
            "after": {"status": "ok", "peak_mb": 900.0, "rss_before_fit_mb": 600.0, "process_peak_rss_mb": 1100.0},
            "after + checkpointing": {"status": "error", "reason": "child exited 1"},
        },
    }
    r = ab_training.ratios(entry)
    assert r["time after"] == 0.5 and r["time after + checkpointing"] == 0.75
    assert r["peak memory after"] == 0.9 and r["training memory after"] == 0.75 and r["process peak after"] == 1.1
    assert r["peak memory after + checkpointing"] is None
    rows = [{"layout": layout, "size": "64x64x64", "status": "ok", "time_s": {"median": t}}
            for layout, t in (("block", 4.0), ("auto", 1.0))]  # fmt: skip
    ab_generation._vs_before(rows)
    assert rows[1]["time_vs_before"] == 0.25 and "time_vs_before" not in rows[0]


def test_switches_found_and_applied_to_the_spade_vqgan() -> None:
    probe, _ = build.build_vqgan("vq_gan_spade_tiny")
    resolved = switches.resolve_all(probe)
    assert resolved["spade_lookup"]["how"] is not None and resolved["checkpointing"]["how"] is not None
    before, info = switches.build_variant("vq_gan_spade_tiny", "before", resolved, seed=0)
    after, _ = switches.build_variant("vq_gan_spade_tiny", "after + checkpointing", resolved, seed=0)
    assert after.hparams.checkpointing is True
    assert switches.build_variant("vq_gan_spade_tiny", "after", resolved, 0, label_nc=7)[0].hparams.label_nc == 7
    assert info["switches"]["spade_lookup"] is False
    assert all(not m.lookup for m in before.modules() if isinstance(m, SPADE))
    assert all(m.lookup for m in after.modules() if isinstance(m, SPADE))
    for a, b in zip(before.state_dict().values(), after.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same weights: the variants differ in computation only
    assert switches.differing("before", "after", resolved)
    missing = switches.resolve(switches.Switch("x", "none", ("no_such_argument",), None, False, True), probe)
    assert missing["how"] is None and "no_such_argument" in missing["reason"]


def test_memory_child_accepts_only_names_of_the_switch_table() -> None:
    table = {s.key: {"how": None, "name": None} for s in switches.SWITCHES}
    assert memchild.checked_resolution(table)["checkpointing"]["how"] is None
    for how, name in (("attribute", "__class__"), ("hparam", "lr"), ("code", "os.system"), ("constant", "os.sep")):
        with pytest.raises(ValueError, match="not in the table"):
            memchild.checked_resolution({**table, "spade_lookup": {"how": how, "name": name}})


def test_real_volumes_come_from_the_registry_never_from_checkpoint_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.write_text("keep")
    plain = {"name": "synthetic", "label_nc": SYNTHETIC_NC, "block_size": [16, 16, 16], "voxel_size": [2.0, 1.5, 1.5]}
    vols = real_volumes(SimpleNamespace(hparams={"data_info": plain}), "train", 1, None)
    assert len(vols) == 1 and tuple(vols[0]["label"].shape) == (1, 16, 16, 16)
    hostile = [
        {**plain, "dataset_kwargs": {"_target_": "os.remove", "path": str(marker)}},
        {**plain, "datamodule": {"_target_": "os.remove", "path": str(marker)}},
    ]
    for info in hostile:  # would delete the marker if anything in it were instantiated
        with pytest.raises(DataError):
            real_volumes(SimpleNamespace(hparams={"data_info": info}), "train", 1, None)
    assert marker.read_text() == "keep"
    with pytest.raises(DataError, match="records no dataset"):
        real_volumes(SimpleNamespace(hparams={}), "train", 1, None)


def test_before_after_markdown_shows_ratios_and_what_is_missing() -> None:
    ba = {
        "status": "ok",
        "training": {"status": "ok", "size": "32x64x64", "rounds": 2, "steps_per_turn": "1 warm-up + 2 timed",
                     "memory_kind": "peak RSS", "models": [{
                         "model": "vqgan_spade", "status": "ok", "differs": {"after": ["spade_lookup"]},
                         "step_time_s": {"before": {"median": 2.0}, "after": {"median": 1.2}},
                         "memory": {"before": {"status": "ok", "peak_mb": 3000.0, "rss_before_fit_mb": 1000.0},
                                    "after": {"status": "ok", "peak_mb": 2000.0, "rss_before_fit_mb": 1000.0}},
                         "ratios": {"time after": 0.6, "peak memory after": 2 / 3, "training memory after": 0.5,
                                    "process peak after": 0.8},
                         "max_rel_output_diff_vs_before": {"before": 0.0, "after": 1e-7},
                         "resolved": {"toggle": {"how": None, "reason": "no such argument"}}}]},
        "sampling": {"status": "not available", "reason": "diffusion.sampling has no cache switch"},
        "generation": {"status": "skipped", "reason": "--ab-parts"},
    }  # fmt: skip
    lines = "\n".join(report_ab_lines(ba))
    assert "| vqgan_spade | after | spade_lookup | 1.2 | 0.6 | 2000 | 0.667 | 1000 | 0.5 | 1e-07 |  |" in lines
    assert "`toggle` not available for vqgan_spade: no such argument." in lines
    assert "vqgan_spade: whole-process ru_maxrss ratios (imports and model included): after 0.8." in lines
    assert "not available: diffusion.sampling has no cache switch" in lines


def report_ab_lines(ba: dict) -> list[str]:
    from scripts.bench.report_ab import before_after_lines

    return before_after_lines(ba)


def test_sampling_cache_comparison_is_bit_identical() -> None:
    """The sampling part on the tiny denoiser at 16^3, 2 DDIM steps: both variants timed, latents equal."""
    if isinstance(ab_sampling.sampling_api(), str):
        pytest.skip(ab_sampling.sampling_api())
    args = argparse.Namespace(ab_size=(16, 16, 16), ab_diffusion="diffusion_tiny", ab_sample_steps=2, ab_rounds=2,
                              seed=0)  # fmt: skip
    out = ab_sampling.bench_ab_sampling(args, torch.device("cpu"))
    assert out["status"] == "ok", out
    assert out["bit_identical"] is True and out["max_abs_diff"] == 0.0
    assert set(out["step_time_s"]) == set(ab_sampling.VARIANTS) and out["ratio"] > 0
    assert all(s["n"] == 2 for s in out["step_time_s"].values())
    assert set(out["amortised_step_time_s"]) == set(ab_sampling.VARIANTS) and out["amortised_ratio"] > 0


def test_fmt_of_report_cells() -> None:
    assert report.fmt(None) == "–" and report.fmt(True) == "yes" and report.fmt(False) == "NO"
    assert report.fmt(0.123456) == "0.123" and report.fmt(123456.7) == "123457"
    assert report.note({"status": "ok"}) == "" and report.note({"status": "error", "reason": "a|b"}) == "error: a/b"


def test_before_after_training_on_real_label_maps(tmp_path: Path) -> None:
    """``--ab-labels``: the batches carry the given maps (their shape becomes --ab-size); a mismatch is refused."""
    from dataset.nifti import save_nifti

    files = []
    for i in range(2):
        label = np.zeros((8, 16, 12), dtype=np.uint8)
        label[2:6, 3 + i : 10, 2:9] = 3
        label[:, :4] = 1
        files.append(str(save_nifti(tmp_path / f"s{i}.nii.gz", label, np.eye(4))))
    args = parse_args(["--out", "x.json", "--quick", "--ab-labels", *files, "--ab-label-nc", "4"])
    assert args.ab_size == (8, 16, 12) and args.ab_labels == files
    data = common.training_volumes(3, args.ab_size, 4, 0, files)
    batches = [data[i] for i in range(3)]
    assert torch.equal(batches[1]["label"][0], torch.from_numpy(np.asarray(stored_label(files[1]))))
    assert torch.equal(batches[2]["label"], batches[0]["label"])  # the maps are taken in turn
    assert float(batches[0]["image"].min()) >= -1.0 and float(batches[0]["image"].max()) <= 1.0
    with pytest.raises(SystemExit) as err:
        parse_args(["--out", "x.json", "--ab-labels", *files, "--ab-size", "8x16x16"])
    assert err.value.code == 2
    with pytest.raises(ValueError, match="benchmark size"):
        common.training_volumes(1, (8, 8, 8), 4, 0, files)


def stored_label(path: str) -> np.ndarray:
    from dataset.nifti import load_label

    return load_label(path)[0].astype(np.int64)
