"""Shared tiny settings and data for the stage-1 tests: 16^3 phantoms, 8-channel nets, 32 codes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.synthetic import SyntheticPhantomDataset
from vq_gan_3d.label_autoencoder import LabelAutoencoder
from vq_gan_3d.module import VQGANModule

LABEL_NC = 3

TINY: dict[str, Any] = {
    "image_channels": 1,
    "label_nc": LABEL_NC,
    "n_hiddens": 8,
    "downsample": [4, 4, 4],
    "embedding_dim": 4,
    "n_codes": 32,
    "num_groups": 8,
    "spade_hidden": 8,
    "disc_channels": 8,
    "disc_layers": 2,
    "perceptual_weight": 0.0,
    "lr": 1e-3,
    "discriminator_iter_start": 1000,
}


def tiny_model(**overrides: Any) -> VQGANModule:
    """A ~0.4M-parameter VQ-GAN for 16^3 inputs."""
    return VQGANModule(**{**TINY, **overrides})


def phantom_batch(n: int = 2, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Nested spheres (3 classes) with class intensities -0.8 / 0.2 / 0.7 and mild noise, shifted per sample."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(size, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    label = torch.zeros(n, 1, size, size, size, dtype=torch.long)
    for i in range(n):
        r = ((zz - size / 2 - i) ** 2 + (yy - size / 2 + 1) ** 2 + (xx - size / 2 + i) ** 2).sqrt()
        label[i, 0][r < size * 0.38] = 1
        label[i, 0][r < size * 0.19] = 2
    image = torch.tensor([-0.8, 0.2, 0.7])[label] + 0.05 * torch.randn(label.shape, generator=g)
    return {"image": image.clamp(-1, 1), "label": label}


class BatchDataset(Dataset):
    """Serves the samples of one fixed batch (so a DataLoader with that batch size yields it every step)."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return self.batch["image"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def loader(batch: dict[str, torch.Tensor]) -> DataLoader:
    return DataLoader(BatchDataset(batch), batch_size=batch["image"].shape[0], shuffle=False)


def trainer(max_steps: int, **kwargs: Any) -> pl.Trainer:
    """CPU trainer without logger, checkpoints, progress bar or summary; ``max_steps`` = 2 x batches."""
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def seg_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from dataset import one_hot

    return one_hot(batch["label"], LABEL_NC)


def run_module_step(
    model: VQGANModule,
    batch: Mapping[str, torch.Tensor],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    after_generator_backward: Callable[[], None] | None = None,
    before_generator_backward: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the current ``model.training_step`` without a Trainer (GAN state from ``global_step`` = 0).

    ``manual_backward`` becomes ``loss.backward(**kwargs)``; ``after_generator_backward`` runs after the
    generator's backward (the first one without ``inputs`` or with the generator's parameters as ``inputs``) and
    ``before_generator_backward`` just before it. ``optimizers()`` returns ``(opt_g, opt_d)``, logging is
    captured, gradient clipping is not applied (it runs in ``on_before_optimizer_step`` under a Trainer).
    Returns the logged values.
    """
    logged: dict[str, Any] = {}
    done = [False]
    first_gen = model._generator_params()[0]

    def backward(loss: torch.Tensor, **kwargs: Any) -> None:
        inputs = kwargs.get("inputs")
        is_gen = not done[0] and (inputs is None or any(p is first_gen for p in inputs))
        if is_gen and before_generator_backward is not None:
            before_generator_backward()
        loss.backward(**kwargs)
        if is_gen:
            done[0] = True
            if after_generator_backward is not None:
                after_generator_backward()

    patches = {
        "optimizers": lambda: (opt_g, opt_d),
        "manual_backward": backward,
        "log": lambda name, value, **kw: logged.__setitem__(name, value),
        "log_dict": lambda values, **kw: logged.update(values),
    }
    model.__dict__.update(patches)
    try:
        model.training_step(batch, 0)
    finally:
        for key in patches:
            model.__dict__.pop(key)
    return logged


def adam_pair(model: VQGANModule) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The module's two Adam optimisers (generator, discriminators)."""
    opt_g, opt_d = model.configure_optimizers()
    return opt_g, opt_d


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of the module's state dict (names and tensor bytes, in key order): a known answer of a training run."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


#: Class names of the 4-class label phantoms.
LABEL_NAMES = ["background", "outer", "middle", "inner"]


def tiny_label_ae() -> LabelAutoencoder:
    """A label autoencoder for 16^3 maps of 4 classes (latent (4, 4, 4, 4))."""
    return LabelAutoencoder(
        4, n_hiddens=8, downsample=(4, 4, 4), latent_channels=4, num_groups=8, class_names=LABEL_NAMES
    )


def label_phantoms(n: int = 2) -> dict[str, torch.Tensor]:
    """``n`` seeded 16^3 synthetic phantoms: label (n, 1, 16, 16, 16) int64 and affine (n, 4, 4)."""
    ds = SyntheticPhantomDataset(num_samples=n, size=(16, 16, 16), label_nc=4, voxel_size=(2.0, 1.5, 1.5), seed=0)
    samples = [ds[i] for i in range(n)]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in ("label", "affine")}
