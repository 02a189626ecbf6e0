"""scripts/benchmark.py and the scripts/bench package: the output folder and option contract, the report and its
comparison with an older one, the helpers with known answers, the Trainer composed from config/trainer, checkpoint
data never building code, the sampling section on a teacher-like and a student-like checkpoint (paired quality,
privacy nn-SSIM, a segmenter's Dice), the class-table comparison, and the fast paths it times.

The fast paths the benchmark measures are real options (``trainer.precision``, ``model.compile``, ``generate.py
--precision / --compile``); here they are checked to give the fp32 / eager result within the benchmark's own
tolerances. Nothing here asserts a time: performance is measured by the script, never by tests (SPEC §9).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import runpy
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
from diffusion.generation.pipeline import GenerationSettings, LabelVolume, generate, load_model
from diffusion.module import LatentDiffusionModule
from scripts.bench import build, cli, common, report
from scripts.bench.sampling import Judge, over_seeds, real_volumes
from scripts.bench.training import forward_outputs
from scripts.generate import parse_args as generate_args
from vq_gan_3d.module import VQGANModule

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
    assert common.parse_sampler("ddpm") == (None, "ddpm", None)
    assert common.parse_sampler("ddim:50") == (None, "ddim", 50)
    assert common.parse_sampler("student=rflow:4") == ("student", "rflow", 4)  # a row of that checkpoint only
    for bad in ("ddpm:500", "euler:3", "ddim:0", "s=ddim:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.parse_sampler(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        common.parse_size("16x16")


def test_known_answer_statistics_and_training_data() -> None:
    assert over_seeds([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}  # sample std over seeds
    assert over_seeds([5.0])["std"] == 0.0
    data = common.Volumes(3, (8, 8, 8), 4, seed=7)
    a, b = data[0], common.Volumes(3, (8, 8, 8), 4, seed=7)[0]
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])  # seeded
    assert a["label"].shape == (1, 8, 8, 8) and 0 <= int(a["label"].min()) and int(a["label"].max()) < 4
    assert -1.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    samples = [{"image": torch.zeros(1, 2, 2, 2), "label": torch.ones(1, 2, 2, 2, dtype=torch.long)}]
    assert common.Volumes(2, (2, 2, 2), 4, samples=samples)[1] is samples[0]  # real samples in turn


def test_over_budget_predicts_from_the_last_measured_row(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = common.PeakMemory(torch.device("cpu"))
    monkeypatch.setattr(memory, "limit_mb", lambda: 1000.0)
    prev = {"size": "16x16x16", "memory": {"baseline_mb": 100.0, "increase_mb": 50.0}}
    assert memory.over_budget(prev, 5.0, 8.0, 10.0) is None  # 5 s, 100 + 8 * 50 = 500 MB: within both
    assert memory.over_budget(prev, 20.0, 8.0, 10.0).startswith("predicted 20 s and 500 MB peak from 16x16x16")
    assert "1100 MB peak" in memory.over_budget(prev, 5.0, 20.0, 10.0)  # over the memory limit


def test_timed_sampling_counts_the_wrapped_calls_and_restores_the_methods() -> None:
    class Schedule:
        def sample(self) -> int:
            return 1

    class FirstStage:
        def decode(self) -> int:
            return 2

    model = SimpleNamespace(schedule=Schedule(), first_stage=FirstStage())
    with common.timed_sampling(model, torch.device("cpu")) as seconds:
        assert model.schedule.sample() == 1 and model.first_stage.decode() == 2
        assert "sample" in vars(model.schedule) and "decode" in vars(model.first_stage)
    assert seconds["denoise_s"] > 0 and seconds["decode_s"] > 0
    assert seconds["seconds"] >= seconds["denoise_s"] + seconds["decode_s"]  # the parts lie within the whole
    assert "sample" not in vars(model.schedule) and "decode" not in vars(model.first_stage)


def test_measured_records_a_failure_and_goes_on() -> None:
    row: dict = {"model": "m"}
    assert common.measured(row, "m", lambda: {"x": 1}, torch.device("cpu")) and row == {"model": "m", "status": "ok",
                                                                                         "x": 1}  # fmt: skip
    row = {}
    assert not common.measured(row, "m", lambda: 1 / 0, torch.device("cpu"))
    assert row == {"status": "error", "reason": "ZeroDivisionError: division by zero"}


SKIP_ALL = ["--device", "cpu", "--quick", "--skip", *cli.SECTIONS]


def test_out_folder_contract(tmp_path: Path) -> None:
    """--out is claimed as every command's output folder: a previous benchmark's files are replaced only with
    --overwrite, a file we did not record is never replaced, an entry that is a link is refused."""
    out = tmp_path / "bench"
    assert cli.main([*SKIP_ALL, "--out", str(out)]) == 0
    data = json.loads((out / cli.RECORD).read_text())
    assert data["schema"] == common.SCHEMA and data["tool"] == "benchmark"
    assert data["outputs"] == [cli.RECORD, cli.SUMMARY] and data["producer"] == "med-lsdm"
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["date"] and "commit" in data["versions"]
    assert data["settings"]["quick"] is True and data["command"][1:] == [*SKIP_ALL, "--out", str(out)]
    assert cli.main([*SKIP_ALL, "--out", str(out)]) == 2  # needs --overwrite
    (out / "notes.txt").write_text("mine")
    assert cli.main([*SKIP_ALL, "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [cli.RECORD, cli.SUMMARY, "notes.txt"]  # no lock, no temp
    (out / cli.SUMMARY).unlink()
    (out / cli.SUMMARY).symlink_to(out / "notes.txt")
    assert cli.main([*SKIP_ALL, "--out", str(out), "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "mine"  # nothing written through the link
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / cli.RECORD).write_text('{"not": "ours"}')
    assert cli.main([*SKIP_ALL, "--out", str(foreign), "--overwrite"]) == 2  # someone else's JSON stays
    assert (foreign / cli.RECORD).read_text() == '{"not": "ours"}'


@pytest.mark.parametrize(
    "extra",
    [["--repeats", "0"], ["--max-seconds", "nan"], ["--guidance", "inf"], ["--seeds", "0", "0"],
     ["--sizes", "16x16"], ["--compare", "missing.json"], ["--compare", "not_a_report.json"],
     ["--ckpt", "not_a_report.json"], ["--samplers", "teacher=ddim:2"], ["--class-tables", "raw"],
     ["--sizes", "16", "--dataset", "x"], ["--dataset", "no_such_dataset"], ["--segmenter", "missing.pt"],
     ["--device", "meta"], ["--variants", "a:spade_lookup=false", "--models", "diffusion_tiny"],
     ["--variants", "a:no_such_arg=1"], ["--variants", "a:", "a:checkpointing=true"], ["--variants", "noname"]],
    ids=lambda e: " ".join(e),
)  # fmt: skip
def test_bad_input_is_refused_before_any_measurement(
    extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cli, "run", lambda *a: pytest.fail("the benchmark ran although its input was refused"))
    monkeypatch.chdir(tmp_path)
    Path("not_a_report.json").write_text("{}")
    assert cli.main(["--quick", "--out", "bench", *extra]) == 2
    assert not Path("bench").exists()  # refused before the folder was claimed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run on the tiny diffusion model: a 16^3 training step and its bf16 variant, generation on 8^3 blocks."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--skip", "sampling", "--models", "diffusion_tiny",
        "--sizes", "16", "--warmup", "0", "--repeats", "1", "--gen-block", "8", "--gen-sizes", "8", "16",
        "--gen-steps", "2",
    ]  # fmt: skip
    levels = {name: logging.getLogger(name).level for name in ("diffusion", "dataset", "pytorch_lightning")}
    assert cli.main(argv) == 0
    # the benchmark quietens these loggers for its run only: a test after it in this process still sees its logs
    assert {name: logging.getLogger(name).level for name in levels} == levels
    return json.loads((out / cli.RECORD).read_text()) | {"_md": (out / cli.SUMMARY).read_text()}


def test_tiny_run_measures_training_and_generation(tiny_run: dict) -> None:
    (row,) = tiny_run["training"]["results"]
    assert row["status"] == "ok" and row["latent"] == "8x4x4x4" and row["classes"] is None, row
    assert row["step_time_s"]["median"] > 0 and row["memory"]["peak_mb"] >= row["memory"]["baseline_mb"] > 0
    fast = {r["option"]: r for r in tiny_run["training"]["fast_paths"]}
    assert fast["trainer.precision=bf16-mixed"]["equal_within_tolerance"] is True
    assert fast["model.compile=true"]["status"] == "skipped"  # --quick: no cold compile
    gen = tiny_run["generation"]
    rows = {r["size"]: r for r in gen["results"]}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert rows["8x8x8"]["windows"] == 1 and rows["8x8x8"]["seam_ratio"] is None  # one window: no seam
    assert rows["16x16x16"]["windows"] > 1 and rows["16x16x16"]["seam_ratio"] > 0
    for r in rows.values():  # denoising and decoding are parts of the whole call
        assert 0 < r["denoise_s"] and 0 < r["decode_s"] and r["denoise_s"] + r["decode_s"] <= r["time_s"]["max"]
    assert gen["fit"]["status"] == "ok"
    assert gen["step_time_s"] is None or gen["step_time_s"]["median"] > 0  # None: below the timing noise
    bf16 = next(r for r in gen["fast_paths"] if r["option"] == "--precision bf16")
    assert bf16["status"] == "ok" and bf16["equal_within_tolerance"] is True
    for heading in ("# Med-LSDM benchmark", "## Training step", "## Sampling", "## Block-wise generation",
                    "time ~ voxels^", "skipped: --skip", "| denoise s | decode s |"):  # fmt: skip
        assert heading in tiny_run["_md"], heading


def test_compare_gives_new_over_old_ratios_of_matching_rows(tiny_run: dict, tmp_path: Path) -> None:
    old = copy.deepcopy(tiny_run)
    old["versions"]["commit"] = "abc1234"
    old["schema"] = "med-lsdm-benchmark/3"  # an older benchmark's report: its rows have no "classes"
    del old["training"]["results"][0]["classes"]
    old["training"]["results"][0]["step_time_s"]["median"] *= 2
    old["training"]["results"][0]["memory"]["peak_mb"] *= 4
    old["generation"]["results"] = old["generation"]["results"][:1]  # 16^3 was not measured then
    old["generation"]["results"][0]["time_s"]["median"] *= 2
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert cli.read_report(tmp_path / "old.json") == old
    new = copy.deepcopy(tiny_run) | {"compare": report.compare(tiny_run, old, "old.json")}
    tables = new["compare"]["tables"]
    assert new["compare"]["old_commit"] == "abc1234"
    assert tables["training"] == [
        {
            "model": "diffusion_tiny",
            "size": "16x16x16",
            "classes": None,  # old reports' rows lack "classes" and "variant": unset
            "variant": None,
            "step s": 0.5,
            "peak MB": 0.25,
        }
    ]
    assert [(r["size"], r["time s"]) for r in tables["generation"]] == [("8x8x8", 0.5)]
    md = report.markdown(new)
    assert "Compared with old.json (commit abc1234" in md and "| step s new/old | peak MB new/old |" in md
    assert "| 0.5 | 0.25 |  |" in md  # the training row's ratios
    assert "| 16x16x16 | 4096 |" in md  # the row without an old measurement stays, with empty ratios


# ------------------------------------------------------------------------------------------------ sampling section
class FixedSegmenter(torch.nn.Module):
    """A stand-in segmenter whose prediction is a given label map (a known Dice)."""

    def __init__(self, label: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(one_hot(label[None], num_classes).float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1, -1)


def test_judge_known_answers() -> None:
    """Real volumes judged against themselves: SSIM 1, nearest training volume itself (nn-SSIM 1); a segmenter
    that predicts the label map gives Dice 1, one that predicts background Dice 0."""
    label = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12] = 2
    label[:, 6:10, 6:10, 6:10] = 1
    image = label.float() - 1  # [-1, 1]
    vols = [{"image": image, "label": label}]
    seg = (FixedSegmenter(label[0], 3), SimpleNamespace(num_classes=3), {"window": [16, 16, 16]})
    judge = Judge(vols, vols, seg)
    got = judge([image[None]])
    assert got["ssim"] == pytest.approx(1.0) and got["nn_ssim"] == pytest.approx(1.0) and got["dice"] == 1.0
    assert got["psnr"] > 60 or got["psnr"] == float("inf")
    judge.segmenter = (FixedSegmenter(torch.zeros_like(label[0]), 3), SimpleNamespace(num_classes=3), seg[2])
    assert judge([image[None]])["dice"] == 0.0


def test_sampling_section_on_a_teacher_and_a_student_checkpoint(tmp_path: Path) -> None:
    from evaluation.segmenter import SegConfig, build_net, save_checkpoint

    eps = _save(_tiny_model(), tmp_path / "eps.ckpt")
    rflow = _save(_tiny_model("rflow"), tmp_path / "rflow.ckpt")
    cfg = SegConfig(num_classes=SYNTHETIC_NC, channels=(4, 8))
    save_checkpoint(tmp_path / "seg.pt", build_net(cfg), cfg, {"window": [16, 16, 16]})
    out = tmp_path / "bench"
    argv = [
        "--device", "cpu", "--quick", "--out", str(out), "--skip", "training", "generation",
        "--ckpt", f"teacher={eps}", f"student={rflow}", "--samplers", "ddpm", "ddim:2", "rflow:1",
        "student=rflow:2", "--sample-volumes", "1", "--seeds", "0", "1", "--privacy-volumes", "2",
        "--segmenter", str(tmp_path / "seg.pt"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    sampling = json.loads((out / cli.RECORD).read_text())["sampling"]
    rows = {(r["checkpoint"], r["label"]): r for r in sampling["results"]}
    assert sorted(rows) == [("student", "ddim-2"), ("student", "ddpm-20"), ("student", "rflow-1"),
                            ("student", "rflow-2"), ("teacher", "ddim-2"), ("teacher", "ddpm-20"),
                            ("teacher", "rflow-1")]  # fmt: skip
    for key in (("teacher", "ddpm-20"), ("teacher", "ddim-2"), ("student", "rflow-1"), ("student", "rflow-2")):
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["time_per_volume_s"]["n"] == 2 and len(row["per_seed"]) == 2  # one volume, two seeds
        assert 0 < row["denoise_s"]["median"] and 0 < row["decode_s"]["median"]
        assert row["denoise_s"]["min"] + row["decode_s"]["min"] <= row["time_per_volume_s"]["max"]  # parts of it
        assert -1.0 <= row["ssim"]["mean"] <= 1.0 and row["psnr"]["mean"] > 0 and row["ssim"]["std"] >= 0
        assert 0 <= row["dice"]["mean"] <= 1 and -1 <= row["nn_ssim"]["mean"] <= 1
    assert rows[("teacher", "ddpm-20")]["speedup"] == 1.0 and sampling["reference"] == "teacher ddpm-20"
    assert rows[("teacher", "rflow-1")]["status"] == "not applicable"
    assert rows[("student", "ddim-2")]["status"] == "not applicable"
    assert rows[("teacher", "ddpm-20")]["passes_per_step"] == 2  # guidance 1.5: two passes per step
    ckpt = sampling["checkpoints"]["teacher"]
    assert ckpt["objective"] == "ddpm" and ckpt["path"] == str(eps) and 0 <= ckpt["real_dice"] <= 1
    assert set(ckpt["first_stage_ceiling"]) == {"ssim", "psnr", "nn_ssim", "dice"}
    assert "data range 1" in sampling["metric_convention"]
    assert "| Dice | nn-SSIM |" in (out / cli.SUMMARY).read_text()


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


@pytest.mark.slow  # a cold inductor compile of even this tiny denoiser takes minutes on one CPU thread
def test_compile_matches_eager_training_forward_and_backward() -> None:
    """The real option (model.compile=true, inductor): compiled vs eager denoiser, outputs and gradients."""
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
def test_entry_points(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``python scripts/benchmark.py`` and ``python -m scripts.benchmark`` run the same entry point (in this process
    through runpy: a fresh interpreter would spend its time importing torch)."""
    for run, target in (
        (runpy.run_path, str(REPO / "scripts" / "benchmark.py")),
        (runpy.run_module, "scripts.benchmark"),
    ):
        monkeypatch.setattr(sys, "argv", ["benchmark.py", "--help"])
        with pytest.raises(SystemExit) as err:
            run(target, run_name="__main__")
        assert err.value.code == 0
        assert "--compare" in capsys.readouterr().out


def test_trainer_is_composed_from_config_trainer(tmp_path: Path) -> None:
    trainer = build.build_trainer(torch.device("cpu"), "bf16-mixed", tmp_path, [])
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == 1 and trainer.logger is None and trainer.checkpoint_callback is None
    assert trainer.precision == "bf16-mixed" and trainer.default_root_dir == str(tmp_path)
    assert isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator)


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


def test_fmt_of_report_cells() -> None:
    assert report.fmt(None) == "–" and report.fmt(True) == "yes" and report.fmt(False) == "NO"
    assert report.fmt(0.123456) == "0.123" and report.fmt(123456.7) == "123457"
    assert report.fmt({"mean": 0.81234, "std": 0.0123}) == "0.812 ± 0.012"
    assert report.ratio({"mean": 0.4, "std": 0.1}, 0.8) == 0.5 and report.ratio(1.0, 0.0) is None
    assert report.note({"status": "ok"}) == "" and report.note({"status": "error", "reason": "a|b"}) == "error: a/b"


def _args(argv: list[str]) -> argparse.Namespace:
    args = cli.build_parser().parse_args(["--out", "x", "--quick", *argv])
    cli.check_args(args)
    return args


@pytest.fixture(scope="module")
def sparse_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config folder with ``dataset/ts.yaml`` (a label table of 4 classes over raw ids up to 117) for a tiny
    sparse CT folder, written by scripts/inspect_dataset.py as a user would."""
    from scripts.inspect_dataset import main as inspect_main
    from tests.scripts.own_data import write_sparse_ct_folder

    root = tmp_path_factory.mktemp("own")
    write_sparse_ct_folder(root / "ts", n_cases=4)
    (root / "my_configs" / "dataset").mkdir(parents=True)
    assert inspect_main([str(root / "ts"), "--out", str(root / "my_configs" / "dataset" / "ts.yaml")]) == 0
    return root / "my_configs"


def test_class_tables_compose_the_table_and_the_raw_ids(sparse_dataset: Path) -> None:
    args = _args(["--config-dir", str(sparse_dataset), "--dataset", "ts", "--class-tables", "table", "raw"])
    assert list(args.class_data) == ["table", "raw"] and args.sizes == []
    composed = {
        t: build.compose_config("vqgan", d.overrides, d.config_dir).dataset for t, d in args.class_data.items()
    }
    assert (composed["table"].label_nc, composed["raw"].label_nc) == (4, 118)  # ids 0, 5, 51, 117: 118 raw channels
    assert composed["raw"].label_table is None and len(composed["raw"].class_names) == 118
    with pytest.raises(DataError, match="--class-tables needs --dataset"):
        _args(["--class-tables", "raw"])


@pytest.mark.slow  # four tiny trainings and their bf16 variants (about a minute on one core)
def test_raw_ids_and_table_are_both_measured_for_both_stages(sparse_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "vocab"
    argv = ["--device", "cpu", "--quick", "--config-dir", str(sparse_dataset), "--dataset", "ts", "--class-tables",
            "table", "raw", "--models", "vqgan_spade_tiny", "diffusion_tiny", "--skip", "sampling", "generation",
            "--warmup", "0", "--repeats", "1", "--rounds", "2", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = {(r["model"], r["classes"]): r for r in json.loads((out / cli.RECORD).read_text())["training"]["results"]}
    for model in ("vqgan_spade_tiny", "diffusion_tiny"):
        table, raw = rows[(model, "table")], rows[(model, "raw")]
        assert (table["label_nc"], raw["label_nc"]) == (4, 118)
        assert table["status"] == raw["status"] == "ok" and table["size"] == raw["size"]
        assert len(raw["step_times_s"]) == 2  # two rounds of one timed step, pooled
        assert raw["vs_first_table"] == pytest.approx(raw["step_time_s"]["median"] / table["step_time_s"]["median"])
    assert "| x first table |" in (out / cli.SUMMARY).read_text()


def test_variants_measure_each_vqgan_once_per_argument_set(tmp_path: Path) -> None:
    out = tmp_path / "variants"
    argv = ["--device", "cpu", "--quick", "--models", "vqgan_spade_tiny", "--sizes", "16", "--skip", "sampling",
            "generation", "--warmup", "0", "--repeats", "1", "--no-compile", "--out", str(out), "--variants",
            "plain:", "lean:spade_lookup=true,checkpointing=true,spade_recompute=true"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((out / cli.RECORD).read_text())
    rows = {r["variant"]: r for r in report["training"]["results"]}
    assert set(rows) == {"plain", "lean"} and all(r["status"] == "ok" for r in rows.values())
    assert (
        rows["lean"]["config_changes"] | {"checkpointing": True, "spade_recompute": True}
        == rows["lean"]["config_changes"]
    )
    assert "spade_recompute" not in rows["plain"]["config_changes"]
    lean, plain = rows["lean"], rows["plain"]
    assert lean["vs_first_variant"]["step"] == pytest.approx(
        lean["step_time_s"]["median"] / plain["step_time_s"]["median"]
    )
    assert lean["vs_first_variant"]["peak"] == pytest.approx(lean["memory"]["peak_mb"] / plain["memory"]["peak_mb"])
    assert rows["plain"]["vs_first_variant"] == {"step": 1.0, "peak": 1.0}
    assert "| variant | x first variant step | x first variant peak |" in (out / cli.SUMMARY).read_text()
