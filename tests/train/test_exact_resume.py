"""Exact resume (SPEC section 10): interrupted + resumed == uninterrupted, bit for bit on the CPU, both stages.

The runs go through :func:`train.run.train` with the tiny model configs on the 16^3 synthetic phantoms (4 batches
of 2 per epoch). The interruption falls in the middle of an epoch, so the data order, the RNG states (codebook
restarts, slice sampling, noise, timesteps, label dropout) and the optimiser must all continue where they
stopped. The resumed run's ``metrics.csv`` must also hold the same rows as the uninterrupted one: the first run's
history is kept, not deleted.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.train.helpers import compose_config
from train.run import train

COMMON = ["dataset=synthetic", "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false",
          "trainer.log_every_n_steps=1", "seed=5"]  # fmt: skip


def _train(primary: str, out: Path, max_steps: int, extra: list[str]) -> None:
    model = "vq_gan_3d_tiny" if primary == "vqgan" else "diffusion_tiny"
    cfg = compose_config(
        primary,
        [*COMMON, f"model={model}", f"trainer.max_steps={max_steps}", f"paths.output_dir={out}",
         f"paths.data_dir={out.parent / 'data'}", *extra],
    )  # fmt: skip
    train(cfg)


def _last(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _rows(out: Path) -> list[tuple]:
    with open(out / "csv" / "metrics.csv", newline="") as fh:
        return sorted(tuple(sorted(row.items())) for row in csv.DictReader(fh))


def _assert_same_state(straight: Path, resumed: Path, steps: int) -> None:
    a, b = _last(straight), _last(resumed)
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ after the resume, e.g. {differ[:3]}"
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"]):
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _rows(straight) == _rows(resumed)  # same history, both halves of it


@pytest.fixture(scope="module")
def vqgan_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 optimiser steps (6 batches: epoch 0 and half of epoch 1) straight, and 6 + resume to 12."""
    root = tmp_path_factory.mktemp("exact_vqgan")
    _train("vqgan", root / "straight", 12, [])
    _train("vqgan", root / "resumed", 6, [])  # stops after batch 3 of 4: mid-epoch
    _train("vqgan", root / "resumed", 12, [])  # ckpt_path=last (the default) resumes
    return root / "straight", root / "resumed"


def test_vqgan_resume_is_bit_exact(vqgan_runs: tuple[Path, Path]) -> None:
    straight, resumed = vqgan_runs
    _assert_same_state(straight, resumed, 12)
    buffers = _last(resumed)["state_dict"]
    assert torch.equal(buffers["codebook.z_avg"], _last(straight)["state_dict"]["codebook.z_avg"])


def test_diffusion_resume_is_bit_exact(vqgan_runs: tuple[Path, Path], tmp_path: Path) -> None:
    first_stage = vqgan_runs[0] / "checkpoints" / "last.ckpt"
    extra = [f"model.first_stage_ckpt={first_stage}", "model.val_sample_steps=2", "model.latent_stats_batches=2"]
    _train("diffusion", tmp_path / "straight", 6, extra)
    _train("diffusion", tmp_path / "resumed", 3, extra)  # mid-epoch
    _train("diffusion", tmp_path / "resumed", 6, extra)
    _assert_same_state(tmp_path / "straight", tmp_path / "resumed", 6)


class _Recorder(pl.LightningModule):
    """Records which samples each training batch holds and one draw of each global RNG per step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("seen", torch.zeros(0, 4))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        import random

        import numpy as np

        ids = [float(s.rsplit("_", 1)[1]) for s in batch["id"]]
        draws = [torch.rand(()).item(), float(np.random.rand()), random.random()]
        row = torch.tensor([[ids[0], ids[1], *draws[:2]]])
        self.seen = torch.cat([self.seen, row])
        return (self.w * batch["image"].mean() - draws[2]).pow(2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.seen = checkpoint["state_dict"]["seen"].clone()  # the buffer grows: load it at its saved size


def _record(out: Path, max_steps: int, workers: int, resume: bool) -> torch.Tensor:
    from functools import partial

    from omegaconf import OmegaConf

    from dataset.datamodule import VolumeDataModule
    from dataset.synthetic import SyntheticPhantomDataset
    from train.callbacks import ModelCheckpoint, ResumeRNGState
    from train.run import build_trainer, resolve_resume_path

    pl.seed_everything(3, workers=True)
    dm = VolumeDataModule(partial(SyntheticPhantomDataset, num_samples=8, label_nc=4), batch_size=2,
                          num_workers=workers, label_nc=4, seed=11)  # fmt: skip
    node = OmegaConf.create(
        {"_target_": "pytorch_lightning.Trainer", "max_steps": max_steps, "accelerator": "cpu", "logger": False,
         "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
         "default_root_dir": str(out)}
    )  # fmt: skip
    callbacks = [ResumeRNGState(), ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0)]
    model = _Recorder()
    build_trainer(node, callbacks, []).fit(
        model, datamodule=dm, ckpt_path=resolve_resume_path("last", out) if resume else None
    )
    return model.seen


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-workers"])
@pytest.mark.parametrize("stop", [3, 4, 6])  # mid-epoch, at the epoch end, mid second epoch
def test_data_order_and_rng_continue_after_resume(tmp_path: Path, workers: int, stop: int) -> None:
    straight = _record(tmp_path / "a", 10, workers, resume=False)
    _record(tmp_path / "b", stop, workers, resume=False)
    resumed = _record(tmp_path / "b", 10, workers, resume=True)
    assert straight.shape == (10, 4)
    assert torch.equal(resumed, straight), f"straight:\n{straight}\nresumed:\n{resumed}"
    epochs = straight[:8, :2].reshape(2, 8).sort().values
    assert torch.equal(epochs[0], torch.arange(8.0)) and torch.equal(epochs[1], torch.arange(8.0))  # 2 permutations
    assert not torch.equal(straight[:4, :2], straight[4:8, :2])  # a new order each epoch


def test_sampler_stream_shards_ranks_and_honours_the_epoch_limit() -> None:
    from dataset.datamodule import ResumableSampler

    data = list(range(10))
    ranks = [list(ResumableSampler(data, seed=1, batch_size=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == data  # disjoint shards covering the epoch
    full = ResumableSampler(data, seed=1, batch_size=2)
    epoch0 = list(full)
    limited = ResumableSampler(data, seed=1, batch_size=2, batches_per_epoch=lambda: 2)
    assert list(limited) == epoch0[:4]  # limit_train_batches=2: the first 2 batches of each epoch
    for _ in range(2):
        limited.advance()
    assert limited.epoch == 0 and list(limited)[:4] != epoch0[:4]  # 2 batches delivered: epoch 1 comes next
    resumed = ResumableSampler(data, seed=1, batch_size=2, start=3)  # 3 batches of epoch 0 already trained
    assert list(resumed) == epoch0[6:]


def test_csv_history_survives_a_resume_and_a_new_column(tmp_path: Path) -> None:
    """Lightning's CSVLogger deletes metrics.csv of a non-empty log folder; ours continues it."""
    from train.loggers import CSVLogger

    first = CSVLogger(str(tmp_path), name="csv", version="")
    first.log_metrics({"train/loss": 1.5}, step=0)
    first.save()
    second = CSVLogger(str(tmp_path), name="csv", version="")  # the resumed run: same folder, same version
    second.log_metrics({"train/loss": 1.25}, step=1)
    second.log_metrics({"train/loss": 1.0, "val/psnr": 20.0}, step=2)  # a column the file does not have yet
    second.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["train/loss"], r["val/psnr"]) for r in rows] == [
        ("0", "1.5", ""), ("1", "1.25", ""), ("2", "1.0", "20.0")
    ]  # fmt: skip


def test_tensorboard_keeps_the_earlier_event_files(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    for step in (0, 1):  # a run and its resume, same folder and version as config/logger/tensorboard.yaml
        tb = TensorBoardLogger(str(tmp_path), name="tensorboard", version="", default_hp_metric=False)
        tb.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        tb.finalize("success")
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_volume_logger_keeps_its_rhythm_across_a_resume(vqgan_runs: tuple[Path, Path]) -> None:
    """VolumeLogger counts validation runs; the count is in the checkpoint, so a resume does not restart it."""
    from train.callbacks import VolumeLogger

    states = _last(vqgan_runs[1])["callbacks"]
    key = next(k for k in states if k.startswith("VolumeLogger"))
    assert states[key] == {"val_runs": 1}  # one validation (end of epoch 0) in 12 steps
    logger = VolumeLogger(out_dir="unused", every_n_val_epochs=2)
    logger.load_state_dict(states[key])
    assert logger.state_dict() == {"val_runs": 1}
