"""Stage 1 of Med-LSDM: the 3D VQ-GAN.

Modules: ``blocks`` (same-padded convs, GroupNorm, ResBlock), ``encoder`` / ``decoder`` (normal and SPADE),
``spade`` (the reusable ``SPADE`` block, also used by the diffusion U-Net), ``codebook`` (EMA codebook),
``discriminator`` (2D/3D PatchGANs), ``losses`` (GAN / feature matching / PSNR), ``perceptual`` (offline LPIPS)
and ``module`` (``VQGANModule``, the LightningModule and the stage-1 -> stage-2 latent interface).

``from vq_gan_3d import VQGANModule`` works; it is imported lazily so that ``import vq_gan_3d.spade`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VQGANModule"]


def __getattr__(name: str) -> Any:
    if name == "VQGANModule":
        from vq_gan_3d.module import VQGANModule

        return VQGANModule
    raise AttributeError(f"module 'vq_gan_3d' has no attribute {name!r}")
