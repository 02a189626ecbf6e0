"""train/console.py and train/curves.py: validation lines, the end-of-fit summary, curves drawn from the CSV log."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from train.console import RunConsole, format_metrics, quiet_lightning
from train.curves import read_metrics_csv, write_curves, write_run_curves


class _Line(pl.LightningModule):
    """y = w x fitted by SGD: the validation loss falls, so the best step is known to be the last one.

    ``first_stage`` is a frozen part in eval mode, as in the diffusion stage (its notice must be silenced).
    """

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.first_stage = torch.nn.Linear(1, 1).eval().requires_grad_(False)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.w * x - y) ** 2).mean()
        self.log("train/loss", loss, on_step=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        mse = ((self.w * x - y) ** 2).mean()
        self.log_dict({"val/loss": mse, "val/psnr": -10 * torch.log10(mse / 4)}, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader() -> DataLoader:
    x = torch.linspace(-1, 1, 16)[:, None]
    return DataLoader(TensorDataset(x, 0.7 * x), batch_size=4)


def test_validation_lines_summary_and_curves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    console = RunConsole(out_dir=str(tmp_path))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", save_last=True)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=12,
        check_val_every_n_epoch=1,
        log_every_n_steps=10,  # more than the 4 batches of an epoch: the warning must be silenced
        num_sanity_val_steps=0,
        enable_model_summary=False,
        logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[console, ckpt],
        accelerator="cpu",
    )
    with caplog.at_level(logging.INFO, logger="train.console"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_lightning()
        trainer.fit(_Line(), _loader(), _loader())
    lines = [r.getMessage() for r in caplog.records if r.name == "train.console"]
    val_lines = [m for m in lines if m.startswith("validation step")]
    assert [m.split(" ")[2] for m in val_lines] == ["4", "8", "12"]  # one line per validation, with its step
    assert val_lines[0].split(": ", 1)[1].startswith("loss ") and " dB" in val_lines[0]
    assert all("(new best)" in m for m in val_lines)  # the loss falls at every validation
    assert any("max_steps=12 reached" in m for m in lines)
    assert any(m.startswith(f"best val/loss {console.best[1]:.4g} at step 12") for m in lines)
    assert any(f"checkpoints in {tmp_path / 'checkpoints'}: best " in m and "last last.ckpt" in m for m in lines)
    assert not [w for w in caught if "logging interval" in str(w.message) or "eval mode" in str(w.message)]
    assert not trainer.progress_bar_callback.is_enabled  # stderr is captured here, not a terminal
    for name in ("curves_train.png", "curves_val.png"):
        img = Image.open(tmp_path / name)
        assert img.size[0] >= 360 and np.asarray(img.convert("L")).std() > 5  # something is drawn


def test_read_metrics_csv_and_run_curves(tmp_path: Path) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,val/psnr\n0,0,1.0,,\n0,1,0.5,,\n0,1,,0.4,20.0\n1,3,0.25,,\n1,3,,0.2,23.0\n"
    )
    series = read_metrics_csv(tmp_path / "csv" / "metrics.csv")
    assert series == {
        "train/loss": [(0, 1.0), (1, 0.5), (3, 0.25)],
        "val/loss": [(1, 0.4), (3, 0.2)],
        "val/psnr": [(1, 20.0), (3, 23.0)],
    }
    written = write_run_curves(tmp_path)
    assert [p.name for p in written] == ["curves_train.png", "curves_val.png"]
    assert write_run_curves(tmp_path / "nowhere") == []
    val = np.asarray(Image.open(tmp_path / "curves_val.png").convert("RGB")).astype(int)
    red = (val[..., 0] > 180) & (val[..., 1] < 80) & (val[..., 2] < 80)
    assert red.sum() > 20  # the best points are marked
    assert write_curves(tmp_path / "csv" / "metrics.csv", tmp_path / "again") != []


def test_format_metrics_puts_the_monitored_metric_first() -> None:
    text = format_metrics({"val/psnr": 22.41234, "val/rec_loss": 0.0812345, "val/code_usage": 0.3}, "val/rec_loss")
    assert text == "rec_loss 0.08123 | code_usage 0.3 | psnr 22.41 dB"


def test_tips_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_lightning()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        logger.info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]


def test_rich_bar_shows_no_negative_epoch_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_epochs -1 (runs end by steps or time) the bar reads "Epoch 3", not "Epoch 3/-2"."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = pl.callbacks.RichProgressBar()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=1, max_epochs=-1, logger=False, callbacks=[bar],
                         enable_checkpointing=False, accelerator="cpu")  # fmt: skip
    RunConsole(out_dir=str(tmp_path), curves=False).setup(trainer, _Line(), "fit")
    assert bar._get_train_description(3).strip() == "Epoch 3"
