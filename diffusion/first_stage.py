"""The frozen stage-1 autoencoder inside stage 2: load it from a VQ-GAN checkpoint or rebuild it from hparams.

A diffusion checkpoint carries the first stage itself (its weights under ``first_stage.`` in the state dict, its
hyperparameters under ``first_stage_hparams`` in the diffusion hyperparameters), so sampling never needs the
original VQ-GAN checkpoint file. Discriminators and LPIPS are never part of it (``inference_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vq_gan_3d.module import VQGANModule


def load_first_stage(ckpt_path: str | Path) -> VQGANModule:
    """Load a frozen, eval-mode VQ-GAN (no discriminators) from a stage-1 Lightning checkpoint.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"first_stage_ckpt={ckpt_path}: no such VQ-GAN checkpoint file")
    model = VQGANModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, inference_only=True)
    model.freeze()
    return model


def build_first_stage(hparams: dict[str, Any]) -> VQGANModule:
    """A frozen, eval-mode VQ-GAN with the architecture of ``hparams`` and *untrained* weights.

    Used when a diffusion checkpoint is loaded: Lightning then fills the weights from its ``first_stage.`` entries.
    """
    model = VQGANModule(**{**hparams, "inference_only": True})
    model.freeze()
    return model


def architecture_hparams(model: VQGANModule) -> dict[str, Any]:
    """The primitive hyperparameters that rebuild ``model``'s architecture (see :func:`build_first_stage`)."""
    return model.first_stage_state()["hparams"]


def decode_first_stage(first_stage: VQGANModule, z: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
    """Quantise and decode latents z (B, E, d, h, w); a SPADE decoder also gets seg (B, K, D, H, W) one-hot.

    Returns:
        (B, 1, D, H, W) in [-1, 1].

    Raises:
        ValueError: a SPADE decoder without a label map.
    """
    spade = first_stage.decoder_type == "spade"
    if spade and seg is None:
        raise ValueError("the SPADE decoder needs the label map")
    return first_stage.decode(z, seg.to(z.dtype) if spade else None).clamp(-1, 1)
