"""The Hydra entry points for real: fit, checkpoint, reload, resume, stage 1 -> stage 2 -> sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.helpers import TINY_DIFFUSION, TINY_VQGAN, run_entry


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def vqgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-optimiser-step (2-batch) VQ-GAN fit through ``python train/train_vqgan.py`` (run as a script)."""
    out = tmp_path_factory.mktemp("vqgan") / "run"
    data = out.parent / "data"
    run_entry(
        "train_vqgan",
        [
            *TINY_VQGAN,
            "trainer.max_steps=4",
            "trainer.limit_train_batches=2",  # one 2-batch epoch, so validation (and its montages) runs
            f"paths.output_dir={out}",
            f"paths.data_dir={data}",
            "seed=3",
        ],
        as_script=True,
    )
    return out


def test_vqgan_fit_writes_checkpoint_that_reloads(vqgan_run: Path) -> None:
    from vq_gan_3d.module import VQGANModule

    last = vqgan_run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert _ckpt_step(last) == 4
    model = VQGANModule.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape[1] == model.embedding_dim
    assert model.decode(z).shape == x.shape
    # Every file of the run is under the output folder: config copy, csv metrics, montages.
    assert (vqgan_run / ".hydra" / "config.yaml").is_file()
    assert (vqgan_run / "csv" / "metrics.csv").is_file()
    assert list((vqgan_run / "images").rglob("montage_0.png"))


def test_resumed_run_continues_from_its_step(vqgan_run: Path, tmp_path: Path) -> None:
    # Same output folder, larger budget: ckpt_path=last (the default) resumes instead of restarting.
    proc = run_entry(
        "train_vqgan",
        [
            *TINY_VQGAN,
            "trainer.max_steps=8",
            "trainer.limit_train_batches=2",
            f"paths.output_dir={vqgan_run}",
            f"paths.data_dir={vqgan_run.parent / 'data'}",
            "seed=3",
        ],
    )
    assert "resuming from" in proc.stderr + proc.stdout
    last = vqgan_run / "checkpoints" / "last.ckpt"
    assert _ckpt_step(last) == 8
    # The resumed run trained exactly the 2 missing batches on top of the first run's 2 (not 4 from scratch).
    progress = torch.load(last, map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert progress["epoch_loop.batch_progress"]["total"]["completed"] == 4
    assert progress["epoch_progress"]["total"]["started"] == 2  # in its second epoch


def test_stage1_to_stage2_to_sample(vqgan_run: Path, tmp_path: Path) -> None:
    from diffusion.module import LatentDiffusionModule

    out = tmp_path / "diff"
    ckpt = vqgan_run / "checkpoints" / "last.ckpt"
    run_entry(
        "train_diffusion",
        [
            *TINY_DIFFUSION,
            "trainer.max_steps=3",
            f"model.first_stage_ckpt={ckpt}",
            f"paths.output_dir={out}",
            f"paths.data_dir={vqgan_run.parent / 'data'}",
        ],
    )
    last = out / "checkpoints" / "last.ckpt"
    assert _ckpt_step(last) == 3
    model = LatentDiffusionModule.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    label = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    label[..., 4:12, 4:12, 4:12] = 1
    from dataset import one_hot

    seg = one_hot(label, model.label_nc)
    gen = torch.Generator().manual_seed(0)
    x = model.sample(seg, sampler="ddim", steps=3, guidance=1.0, generator=gen, progress=False)
    assert x.shape == (1, 1, 16, 16, 16)
    assert torch.isfinite(x).all() and x.abs().max() <= 1


def test_missing_first_stage_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    proc = run_entry("train_diffusion", [*TINY_DIFFUSION, f"paths.output_dir={tmp_path / 'x'}"], check=False)
    assert proc.returncode != 0
    assert "first_stage_ckpt" in proc.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()  # nothing trained


def test_state_digest_callback_records_weights(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from train.callbacks import StateDigest

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(Tiny())
    StateDigest(str(tmp_path)).on_fit_end(trainer, trainer.lightning_module)
    record = json.loads((tmp_path / "state_digest_rank0.json").read_text())
    assert record["sum"] == pytest.approx(3.0) and len(record["sha256"]) == 64
