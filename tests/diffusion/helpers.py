"""Stage-2 test helpers: a tiny random-weight VQ-GAN checkpoint and a tiny labelled volume dataset."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vq_gan_3d.module import VQGANModule

LABEL_NC = 3
IMAGE = (8, 16, 16)  # (D, H, W); with downsample [2, 2, 2] the latent is (4, 4, 8, 8)


def save_tiny_vqgan(path: Path, decoder: str = "normal", seed: int = 0) -> Path:
    """Write a Lightning-loadable checkpoint of a tiny VQ-GAN whose codebook has been initialised on data."""
    torch.manual_seed(seed)
    vq = VQGANModule(
        image_channels=1, label_nc=LABEL_NC, decoder=decoder, n_hiddens=8, downsample=[2, 2, 2], embedding_dim=4,
        n_codes=32, num_groups=4, spade_hidden=8, perceptual_weight=0.0, disc_channels=8, disc_layers=1,
    )  # fmt: skip
    vq.codebook.train()
    vq.codebook(vq.pre_vq_conv(vq.encoder(torch.rand(2, 1, *IMAGE) * 2 - 1)))  # data-dependent codebook init
    torch.save(
        {
            "state_dict": vq.state_dict(),
            "hyper_parameters": dict(vq.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


class TinyVolumes(Dataset):
    """``n`` seeded 8×16×16 volumes whose intensity follows the label map (so there is something to learn)."""

    def __init__(self, n: int = 2) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        label = torch.randint(0, LABEL_NC, (1, *IMAGE), generator=g)
        image = ((label.float() - 1) * 0.5 + 0.05 * torch.randn(1, *IMAGE, generator=g)).clamp(-1, 1)
        return {"image": image, "label": label, "affine": torch.eye(4, dtype=torch.float64), "id": f"vol{i}"}


def tiny_loader(n: int = 2, batch_size: int = 2) -> DataLoader:
    return DataLoader(TinyVolumes(n), batch_size=batch_size, shuffle=False)


class TinyData(pl.LightningDataModule):
    """:func:`tiny_loader` for training and validation, as a datamodule (the statistics are read from its loader)."""

    def __init__(self, n: int = 2, batch_size: int = 2) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        return tiny_loader(self.n, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return tiny_loader(self.n, self.batch_size)
