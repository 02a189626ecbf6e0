"""Checkpoint writes survive failures and kills; resume skips an unreadable newest checkpoint (SPEC section 10)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.train.helpers import compose_config
from train.checkpointing import AtomicCheckpointIO, UnreadableCheckpoints, checkpoint_problem
from train.run import CONFIG_DIR, USER_ERRORS, build_trainer, resolve_resume_path

TRAINER_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))


def _ckpt(step: int) -> dict:
    """A small checkpoint with the keys resume needs (state_dict, global_step)."""
    return {"state_dict": {"w": torch.full((64,), float(step))}, "global_step": step, "epoch": 0}


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.parametrize("name", TRAINER_CONFIGS)
def test_every_trainer_config_writes_checkpoints_atomically(name: str, tmp_path: Path) -> None:
    cfg = compose_config("vqgan", [f"trainer={name}", f"paths.output_dir={tmp_path}"])
    # accelerator/strategy/devices are not what this test is about: build every config on one CPU process
    cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.num_nodes = "cpu", 1, "auto", 1
    cfg.trainer.precision = "32-true"
    trainer = build_trainer(cfg.trainer, [], [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_foreign_checkpoint_writer_is_refused(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from train.run import ConfigError

    node = OmegaConf.create(
        {
            "_target_": "pytorch_lightning.Trainer",
            "plugins": [{"_target_": "pytorch_lightning.plugins.TorchCheckpointIO"}],
        }
    )
    with pytest.raises(ConfigError, match="AtomicCheckpointIO"):
        build_trainer(node, [], [])


def test_checkpoint_is_written_to_a_temp_file_in_its_own_folder(tmp_path: Path, monkeypatch) -> None:
    moves: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        moves.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(3), target)
    assert [dst for _, dst in moves] == [target]
    src = moves[0][0]
    assert src.parent == target.parent and src.name.startswith(".last.ckpt.")  # same folder: a rename, not a copy
    assert _step(target) == 3 and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(1), target)
    good = target.read_bytes()
    real_save = torch.save

    def dies_half_way(obj: object, f: str | os.PathLike) -> None:
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\0" * 4092)  # the first 4 KB of a zip, then the "disk" fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint(_ckpt(2), target)
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == good and _step(target) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import torch
from train.checkpointing import AtomicCheckpointIO

def slow_save(obj, f):
    with open(f, "wb") as fh:
        fh.write(b"PK\\x03\\x04" + b"\\0" * 4092)
        fh.flush()
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)  # killed here, mid-write

torch.save = slow_save
AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 2}, sys.argv[1])
"""


def test_a_killed_write_leaves_the_old_checkpoint_loadable_and_resume_takes_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    target = run / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), target)
    flag = tmp_path / "writing"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), str(flag)], cwd=repo)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert flag.exists(), "the writer never started"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert _step(target) == 1  # the old checkpoint is whole
    leftovers = [p for p in target.parent.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.")  # SIGKILL runs no cleanup...
    assert resolve_resume_path("last", run) == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # ...the next start removes it


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(4), ckpt_dir / "best-4.ckpt")
    io.save_checkpoint(_ckpt(8), ckpt_dir / "last.ckpt")
    assert resolve_resume_path("last", tmp_path) == str(ckpt_dir / "last.ckpt")
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # what an in-place write killed half way leaves
    assert checkpoint_problem(last) is not None
    with caplog.at_level(logging.WARNING, logger="train.checkpointing"):
        assert resolve_resume_path("last", tmp_path) == str(ckpt_dir / "best-4.ckpt")
    assert "skipping unreadable checkpoint" in caplog.text and "last.ckpt" in caplog.text


def test_resume_prefers_the_newest_readable_and_refuses_when_none_is(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(8), tmp_path / "checkpoints" / "last.ckpt")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    io.save_checkpoint(_ckpt(9), hpc)
    os.utime(hpc, (time.time() + 10, time.time() + 10))  # the requeue checkpoint is newer: it wins
    assert resolve_resume_path("last", tmp_path) == str(hpc)
    for p in [hpc, tmp_path / "checkpoints" / "last.ckpt"]:
        p.write_bytes(b"garbage")
    torch.save({"not": "a training checkpoint"}, tmp_path / "checkpoints" / "other.ckpt")
    with pytest.raises(UnreadableCheckpoints, match="no checkpoint in .* loads") as err:
        resolve_resume_path("last", tmp_path)  # starting over would overwrite them: refused
    assert "last.ckpt" in str(err.value) and "other.ckpt" in str(err.value)
    assert isinstance(err.value, USER_ERRORS)  # one line, exit 2 at the entry points


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoints_go_through_the_atomic_writer(tmp_path: Path, monkeypatch) -> None:
    """End to end: a Trainer built by train.run saves last.ckpt via a same-folder temp file."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from train.callbacks import ModelCheckpoint

    written: list[Path] = []
    real_save = torch.save

    def spy(obj: object, f: str | os.PathLike, *a, **k) -> None:
        written.append(Path(f))
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    node = OmegaConf.create(
        {"_target_": "pytorch_lightning.Trainer", "max_steps": 2, "accelerator": "cpu", "enable_progress_bar": False,
         "enable_model_summary": False, "default_root_dir": str(tmp_path)}
    )  # fmt: skip
    ckpt_dir = tmp_path / "checkpoints"
    trainer = build_trainer(node, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)], [])
    trainer.fit(_Linear(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    assert written and all(p.parent == ckpt_dir and p.name.startswith(".last.ckpt.") for p in written)
    assert _step(ckpt_dir / "last.ckpt") == 2
