"""Few-step distillation (diffusion/distill.py, train/train_distill.py) at tiny size (16^3 synthetic phantoms).

A tiny rectified-flow teacher is trained through the real entry point on the shared tiny VQ-GAN; the students are
distilled from it through ``train/train_distill.py`` / :func:`train.run.train`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny_checkpoints import TinyModel
from tests.train.helpers import TINY_DIFFUSION, compose_config, run_entry
from train.run import train

COMMON = ["dataset=synthetic", "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false",
          "trainer.log_every_n_steps=1", "seed=5", "datamodule.per_map=1", "datamodule.maps=3",
          "model.teacher_steps=2", "trainer.check_val_every_n_epoch=100"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rectified-flow stage-2 model trained 2 steps on the shared tiny VQ-GAN."""
    root = tmp_path_factory.mktemp("distill_teacher")
    run_entry(
        "train_diffusion",
        [*TINY_DIFFUSION, "model=diffusion_rflow_tiny", "trainer.max_steps=2", "model.latent_stats_batches=1",
         f"model.first_stage_ckpt={tiny_model.vqgan}", f"paths.output_dir={root}", f"paths.data_dir={root / 'data'}",
         "seed=1"],
    )  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


def _distill(teacher: Path, out: Path, max_steps: int, extra: list[str] = ()) -> None:
    cfg = compose_config(
        "distill",
        [*COMMON, f"model.teacher_ckpt={teacher}", f"trainer.max_steps={max_steps}", f"paths.output_dir={out}",
         f"paths.data_dir={out.parent / 'data'}", *extra],
    )  # fmt: skip
    train(cfg)


def _last(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_student_is_a_stage2_checkpoint_sampled_by_generate_in_one_step(teacher: Path, tmp_path: Path) -> None:
    """The entry point as a user runs it; generate.py loads the student unchanged and samples it with --steps 1."""
    out = tmp_path / "distill"
    run_entry("train_distill", [*COMMON, f"model.teacher_ckpt={teacher}", "trainer.max_steps=3",
              f"paths.output_dir={out}", f"paths.data_dir={tmp_path / 'data'}"], as_script=True)  # fmt: skip
    ckpt = _last(out)
    hp = ckpt["hyper_parameters"]
    assert "teacher_ckpt" not in hp and "method" not in hp  # only stage-2 constructor arguments
    assert (hp["guidance"], hp["sampler"], hp["sample_steps"], hp["p_uncond"]) == (1.0, "rflow", 4, 0.0)
    assert ckpt["distillation"]["method"] == "reflow" and ckpt["global_step"] == 3
    teacher_sd = torch.load(teacher, map_location="cpu", weights_only=True)["state_dict"]
    assert ckpt["state_dict"].keys() == teacher_sd.keys()
    assert not torch.equal(ckpt["state_dict"]["denoiser.final_conv.weight"], teacher_sd["denoiser.final_conv.weight"])
    assert len(list((out / "teacher_pairs").glob("pair_*.pt"))) == 3

    from scripts.generate import main

    gen = tmp_path / "gen"
    argv = ["--ckpt", str(out / "checkpoints" / "last.ckpt"), "--labels", "split=test", "--out", str(gen),
            "--device", "cpu", "--steps", "1", "--data-root", str(tmp_path / "data" / "synthetic")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((gen / "generation.json").read_text())
    assert (record["sampler"], record["steps"], record["guidance"]) == ("rflow", 1, 1.0)
    assert list(gen.glob("*.nii.gz"))


def test_teacher_pairs_start_from_the_noise_of_the_sampling_run(teacher: Path) -> None:
    """One Euler step from the stored noise, with the teacher's guided velocity, is the stored latent."""
    from diffusion.distill import teacher_pairs
    from diffusion.guidance import GuidedDenoiser
    from diffusion.module import load_checkpoint

    model = load_checkpoint(teacher)
    labels = torch.randint(0, model.label_nc, (2, 16, 16, 16))
    noise, latent = teacher_pairs(model, labels, [3, 4], steps=1, guidance=2.0)
    assert not torch.equal(noise[0], noise[1])
    big_t = model.schedule.num_train_timesteps
    from dataset.contract import one_hot

    guided = GuidedDenoiser(model.ema.module, one_hot(labels[:, None], model.label_nc), 2.0)
    with torch.no_grad():
        expected = noise + guided(noise, torch.full((2,), big_t, dtype=torch.long)).float()
    # normalise(denormalise(z)) round trip: float rounding only
    torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)
    again = teacher_pairs(model, labels[1:], [4], steps=1, guidance=2.0)
    assert torch.equal(again[0][0], noise[1])  # each pair's noise is its own seed's, whatever the batch
    torch.testing.assert_close(again[1][0], latent[1], rtol=1e-5, atol=1e-5)  # batched convs: float rounding


class _Killed(Exception):
    pass


class _DiesAt(torch.utils.data.Dataset):
    """Label maps whose ``die_at``-th access raises (a run killed while making that map's pairs)."""

    def __init__(self, die_at: int | None) -> None:
        self.die_at = die_at
        self.seen: list[int] = []

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i == self.die_at:
            raise _Killed
        self.seen.append(i)
        return {"label": torch.randint(0, 4, (1, 16, 16, 16), generator=torch.Generator().manual_seed(i))}


def test_cached_pairs_are_reused_after_a_kill(teacher: Path, tmp_path: Path) -> None:
    from dataset.contract import DataError
    from diffusion.distill import TeacherPairs
    from diffusion.module import load_checkpoint

    model = load_checkpoint(teacher)
    settings = {"teacher_sha256": "x", "steps": 2, "guidance": None, "seed": 1, "per_map": 2, "maps": 3}
    cache = TeacherPairs(tmp_path / "pairs", settings)
    with pytest.raises(_Killed):
        cache.fill(model, _DiesAt(die_at=1))
    assert sorted(p.name for p in cache.folder.iterdir()) == ["pair_00000.pt", "pairs.json"]  # no partial file
    first = cache.path(0).stat()
    maps = _DiesAt(die_at=None)
    assert cache.fill(model, maps) == 2 and maps.seen == [1, 2]  # only the missing maps are made
    assert cache.path(0).stat().st_mtime_ns == first.st_mtime_ns and cache.path(0).stat().st_ino == first.st_ino
    straight = TeacherPairs(tmp_path / "straight", settings)
    straight.fill(model, _DiesAt(die_at=None))
    assert len(cache) == len(straight) == 6
    for a, b in zip(cache, straight):
        assert all(torch.equal(a[k], b[k]) for k in ("label", "noise", "latent"))
    with pytest.raises(DataError, match="other settings"):
        TeacherPairs(tmp_path / "pairs", {**settings, "steps": 3}).fill(model, maps)


@pytest.mark.parametrize(
    ("method", "extra"),
    [("reflow", []), ("progressive", ["model.student_steps=1", "model.progressive_start_steps=4",
                                      "model.steps_per_round=2"])],
)  # fmt: skip
def test_distillation_resume_is_bit_exact(teacher: Path, tmp_path: Path, method: str, extra: list[str]) -> None:
    """Interrupted at step 3 (progressive: inside round 2, whose teacher the student made) and resumed == straight."""
    extra = [f"model.method={method}", *extra]
    _distill(teacher, tmp_path / "straight", 5, extra)
    _distill(teacher, tmp_path / "resumed", 3, extra)
    _distill(teacher, tmp_path / "resumed", 5, extra)
    a, b = _last(tmp_path / "straight"), _last(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 5
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ after the resume, e.g. {differ[:3]}"
    if method == "progressive":
        assert a["distillation"]["teacher_round"] == b["distillation"]["teacher_round"] == 1
        ta, tb = a["distillation"]["teacher_state"], b["distillation"]["teacher_state"]
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_progressive_steps_must_halve_to_the_student(teacher: Path) -> None:
    from diffusion.distill import DistillationModule

    with pytest.raises(ValueError, match="2\\^k"):
        DistillationModule(str(teacher), method="progressive", student_steps=3, progressive_start_steps=32)


def test_a_ddpm_teacher_is_refused_in_one_line(tiny_model: TinyModel, tmp_path: Path) -> None:
    proc = run_entry("train_distill", [*COMMON, f"model.teacher_ckpt={tiny_model.diffusion}", "trainer.max_steps=1",
                     f"paths.output_dir={tmp_path / 'd'}"], check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "rectified-flow" in proc.stderr


@pytest.mark.slow
def test_distillation_ddp_ranks_agree(teacher: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): rank 0 makes the pairs, both ranks train on them and end with identical weights."""
    out = tmp_path / "ddp"
    run_entry("train_distill", [*COMMON, f"model.teacher_ckpt={teacher}", "trainer=ddp_cpu", "trainer.max_steps=3",
              f"paths.output_dir={out}", f"paths.data_dir={tmp_path / 'data'}",
              "+callbacks.state_digest._target_=train.callbacks.StateDigest",
              f"+callbacks.state_digest.out_dir={out}"], env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    d0, d1 = (json.loads(f.read_text()) for f in sorted(out.glob("state_digest_rank*.json")))
    assert d0["world_size"] == 2 and d0["global_step"] == d1["global_step"] == 3
    assert d0["sha256"] == d1["sha256"], "student weights differ between DDP ranks"
    assert len(list((out / "teacher_pairs").glob("pair_*.pt"))) == 3
