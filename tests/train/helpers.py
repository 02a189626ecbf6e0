"""Helpers for tests of the Hydra configs and of the real entry points (run in subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]

# Tiny, fast settings shared by the entry-point tests (16^3 synthetic phantoms, CPU, csv logger only).
TINY_VQGAN = [
    "dataset=synthetic",
    "model=vq_gan_3d_tiny",
    "trainer=cpu",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.volume_logger.every_n_val_epochs=1",
]
TINY_LABELS = ["dataset=synthetic", "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false"]
TINY_DIFFUSION = [
    "dataset=synthetic",
    "model=diffusion_tiny",
    "trainer=cpu",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


def compose_config(name: str, overrides: Sequence[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Config ``name`` of ``config_dir`` (``train.run.CONFIG_DIR`` by default) composed with ``overrides``."""
    # Imported here: train.run imports Lightning, which must not load when tests/conftest.py imports this module.
    from train.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def run_entry(
    entry: str,
    overrides: list[str],
    *,
    as_script: bool = False,
    timeout: int = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m train.<entry>`` (or ``python train/<entry>.py``) from the repository root."""
    cmd = [sys.executable, f"train/{entry}.py"] if as_script else [sys.executable, "-m", f"train.{entry}"]
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "1")  # see tests/conftest.py
    proc = subprocess.run(cmd + overrides, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd + overrides)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc
