"""Shared stage-2 fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.diffusion.helpers import save_tiny_vqgan


@pytest.fixture
def vq_ckpt(tmp_path: Path) -> Path:
    """A tiny normal-decoder VQ-GAN checkpoint (latent factor (2, 2, 2), 4 latent channels)."""
    return save_tiny_vqgan(tmp_path / "vqgan.ckpt")
