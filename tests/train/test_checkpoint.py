"""train.callbacks.ModelCheckpoint keeps last.ckpt at the newest step, also when the monitored metric gets worse."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from train.callbacks import ModelCheckpoint


class WorseningModel(pl.LightningModule):
    """A linear model whose logged validation metric grows every epoch: only epoch 0 is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    ckpt_dir: Path, max_steps: int, callback: pl.Callback, resume: str | None = None, val_every: int = 1
) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)  # 4 batches per epoch
    trainer = pl.Trainer(
        max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", default_root_dir=ckpt_dir,
        check_val_every_n_epoch=val_every,
    )  # fmt: skip
    trainer.fit(WorseningModel(), train_dataloaders=data, val_dataloaders=data, ckpt_path=resume)
    return trainer


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def _callback(ckpt_dir: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=ckpt_dir, filename="best-{step}", monitor="val/loss", save_top_k=1, save_last=True,
                           auto_insert_metric_name=False)  # fmt: skip


@pytest.mark.parametrize("val_every", [1, 2])  # Lightning saves at the train epoch end (1) or after validation (2)
def test_last_checkpoint_follows_training_not_the_best(tmp_path: Path, val_every: int) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    _fit(tmp_path, 12 * val_every, _callback(ckpt_dir), val_every=val_every)  # 3 validations, 4 steps per epoch
    best = 4 * val_every  # the first validation stays the best
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"best-{best}.ckpt", "last.ckpt"]
    assert _step(ckpt_dir / f"best-{best}.ckpt") == best
    assert _step(ckpt_dir / "last.ckpt") == 12 * val_every


def test_last_checkpoint_is_written_when_training_stops_between_validations(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    _fit(tmp_path, 6, _callback(ckpt_dir))  # stops in the middle of epoch 1, after the validation of epoch 0
    assert _step(ckpt_dir / "last.ckpt") == 6
    resumed = _fit(tmp_path, 8, _callback(ckpt_dir), resume=str(ckpt_dir / "last.ckpt"))
    assert resumed.global_step == 8
    assert _step(ckpt_dir / "last.ckpt") == 8


def test_lightning_alone_leaves_last_at_the_best_step(tmp_path: Path) -> None:
    """Why the subclass exists: if Lightning fixes this, the subclass can go (this test then fails)."""
    ckpt_dir = tmp_path / "checkpoints"
    stock = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{step}",
        monitor="val/loss",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    _fit(tmp_path, 12, stock)
    assert _step(ckpt_dir / "last.ckpt") == 4
