"""Fixtures of the labels-stage tests: a tiny label autoencoder + label diffusion, trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dataset.nifti import save_nifti
from dataset.synthetic import SyntheticPhantomDataset
from tests.train.helpers import run_entry

TINY_LABELS = ["dataset=synthetic", "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false"]


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


def export_phantoms(split: str, folder: Path, n: int, suffix: str = "", seed: int = 0) -> None:
    """``n`` 8^3 synthetic phantoms (4 classes) as ``folder/images/<id><suffix>.nii.gz`` + ``folder/labels/<id>``."""
    ds = SyntheticPhantomDataset(split=split, num_samples=n, size=(8, 8, 8), label_nc=4, seed=seed)
    for i in range(n):
        s = ds[i]
        save_nifti(folder / "images" / f"{s['id']}{suffix}.nii.gz", s["image"], s["affine"])
        save_nifti(folder / "labels" / f"{s['id']}.nii.gz", s["label"], s["affine"])
