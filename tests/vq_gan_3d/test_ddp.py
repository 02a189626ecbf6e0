"""Two-process CPU DDP (gloo, ddp_spawn) of the whole module: both ranks must end with identical state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.vq_gan_3d.helpers import BatchDataset, phantom_batch, tiny_model

pytestmark = pytest.mark.slow


class _SaveState(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(pl_module.state_dict(), Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_ranks_agree_after_gan_steps(decoder: str, tmp_path: Path) -> None:
    # Different data per rank; the GAN is on from the second batch, so both optimisers see real gradients.
    pl.seed_everything(0, verbose=False)
    model = tiny_model(decoder=decoder, discriminator_iter_start=1)
    trainer = pl.Trainer(
        max_steps=6, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[_SaveState(str(tmp_path))],
    )  # fmt: skip
    trainer.fit(model, DataLoader(BatchDataset(phantom_batch(n=4)), batch_size=2))
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert [k for k in s0 if not torch.equal(s0[k], s1[k])] == []
    assert bool(s0["codebook.initialized"])
