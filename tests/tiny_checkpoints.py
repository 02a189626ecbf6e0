"""The tiny trained checkpoints the tests share: the stage-1/stage-2 pair and the labels-stage pair.

Registered once, in ``tests/conftest.py``, so a session trains each once whichever folders' tests ask for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.train.helpers import TINY_DIFFUSION, TINY_LABELS, TINY_VQGAN, run_entry


@dataclass(frozen=True)
class TinyModel:
    """A trained stage-1/stage-2 pair on the synthetic dataset (16^3 blocks, voxel (2.0, 1.5, 1.5) mm D, H, W)."""

    diffusion: Path
    vqgan: Path
    label_nc: int
    block: tuple[int, int, int]
    voxel_dhw: tuple[float, float, float]
    data_info: dict


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train a VQ-GAN (1 batch) then a diffusion model (2 steps) through the real Hydra entry points, once."""
    root = tmp_path_factory.mktemp("generation_ckpt")
    data = root / "data"
    run_entry(
        "train_vqgan",
        [*TINY_VQGAN, "trainer.max_steps=2", f"paths.output_dir={root / 'vqgan'}", f"paths.data_dir={data}", "seed=1"],
    )
    vqgan = root / "vqgan" / "checkpoints" / "last.ckpt"
    run_entry(
        "train_diffusion",
        [
            *TINY_DIFFUSION,
            "trainer.max_steps=2",
            "model.latent_stats_batches=1",
            f"model.first_stage_ckpt={vqgan}",
            f"paths.output_dir={root / 'diffusion'}",
            f"paths.data_dir={data}",
            "seed=1",
        ],
    )
    ckpt = root / "diffusion" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and vqgan.is_file()
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    info = hp["data_info"]
    return TinyModel(
        diffusion=ckpt,
        vqgan=vqgan,
        label_nc=int(hp["label_nc"]),
        block=tuple(hp["block_size"]),
        voxel_dhw=tuple(float(v) for v in info["voxel_size"]),
        data_info=info,
    )


@dataclass(frozen=True)
class TinyLabelModel:
    """Checkpoints of the labels stage trained on the synthetic dataset (16^3 maps, 4 classes)."""

    label_ae: Path
    label_diffusion: Path
    data_dir: Path


@pytest.fixture(scope="session")
def tiny_label_model(tmp_path_factory: pytest.TempPathFactory) -> TinyLabelModel:
    """Label autoencoder (4 steps) then label diffusion (4 steps) through the real Hydra entry points."""
    root = tmp_path_factory.mktemp("labels_ckpt")
    data = root / "data"
    run_entry(
        "train_label_ae",
        [*TINY_LABELS, "model=label_ae_tiny", "trainer.max_steps=4", f"paths.output_dir={root / 'ae'}",
         f"paths.data_dir={data}", "seed=1"],
    )  # fmt: skip
    ae = root / "ae" / "checkpoints" / "last.ckpt"
    run_entry(
        "train_label_diffusion",
        [*TINY_LABELS, "model=label_diffusion_tiny", "trainer.max_steps=4", "model.stats_batches=2",
         "model.centroid_classes=[inner]", f"model.label_ae_ckpt={ae}", f"paths.output_dir={root / 'diffusion'}",
         f"paths.data_dir={data}", "seed=1"],
    )  # fmt: skip
    ckpt = root / "diffusion" / "checkpoints" / "last.ckpt"
    assert ae.is_file() and ckpt.is_file()
    return TinyLabelModel(ae, ckpt, data)
