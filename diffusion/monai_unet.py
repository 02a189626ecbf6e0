"""MONAI's ``SPADEDiffusionModelUNet`` behind our denoiser interface, for comparison with ``Unet3DSPADE``.

MONAI's U-Net is fully 3D (3×3×3 convs, isotropic 2× down/up-sampling, self-attention on chosen levels) with SPADE
in the decoder only. It receives our latent-aligned label features as its ``seg`` input; MONAI's SPADE layers then
nearest-resize them to each decoder level. Because MONAI downsamples depth too, every latent axis (d, h, w) must be
divisible by ``2 ** (len(dim_mults) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SPADEDiffusionModelUNet

from diffusion.denoiser_base import Denoiser


class MonaiSPADEUNet(Denoiser):
    """``monai.networks.nets.SPADEDiffusionModelUNet`` conditioned on latent-aligned label features.

    Args:
        channels: latent channels C.
        label_nc: K, one-hot classes.
        latent_factor: (fd, fh, fw) of the VQ-GAN.
        dim: base width; level widths are ``dim · dim_mults`` (MONAI's ``channels``).
        dim_mults: width multipliers per level.
        num_res_blocks: ResNet blocks per level.
        attention_levels: self-attention per level (default: the deepest level only).
        attn_dim_head: channels per attention head (MONAI's ``num_head_channels``).
        resnet_groups: GroupNorm groups (MONAI's ``norm_num_groups``).
        spade_hidden: MONAI's ``spade_intermediate_channels``.
        label_encoder: "conv" or "pool".
        label_channels: conv label-encoder output channels.
        label_hidden: conv label-encoder hidden channels.
        extra_channels: see :class:`~diffusion.denoiser_base.Denoiser`.
    """

    def __init__(
        self,
        channels: int,
        label_nc: int,
        latent_factor: Sequence[int],
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] | None = None,
        attn_dim_head: int = 32,
        resnet_groups: int = 8,
        spade_hidden: int = 64,
        label_encoder: str = "conv",
        label_channels: int = 64,
        label_hidden: Sequence[int] = (64, 128),
        extra_channels: int = 0,
    ) -> None:
        super().__init__(
            channels, label_nc, latent_factor, "spade", label_encoder, label_channels, label_hidden, extra_channels
        )
        widths = [dim * int(m) for m in dim_mults]
        if attention_levels is None:
            attention_levels = [False] * (len(widths) - 1) + [True]
        if len(attention_levels) != len(widths):
            raise ValueError(f"attention_levels needs {len(widths)} entries, got {list(attention_levels)}")
        if any(w % resnet_groups or w % attn_dim_head for w in widths):
            raise ValueError(
                f"widths {widths} must be divisible by resnet_groups={resnet_groups} and attn_dim_head={attn_dim_head}"
            )
        self.num_downsamples = len(widths) - 1
        self.unet = SPADEDiffusionModelUNet(
            spatial_dims=3,
            in_channels=self.in_channels,
            out_channels=channels,
            label_nc=self.label_channels,
            num_res_blocks=num_res_blocks,
            channels=widths,
            attention_levels=[bool(a) for a in attention_levels],
            norm_num_groups=resnet_groups,
            num_head_channels=attn_dim_head,
            spade_intermediate_channels=spade_hidden,
        )

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """Every axis is halved ``len(widths) - 1`` times."""
        return (2**self.num_downsamples,) * 3

    def predict(self, x: torch.Tensor, t: torch.Tensor, label_features: torch.Tensor | None) -> torch.Tensor:
        """x: (B, C, d, h, w), t: (B,), label_features: (B, C_label, d, h, w) → (B, C, d, h, w)."""
        div = 2**self.num_downsamples
        if any(s % div for s in x.shape[2:]):
            raise ValueError(
                f"latent size {tuple(x.shape[2:])} must be divisible by {div} on every axis for MONAI's UNet"
            )
        return self.unet(x, t, seg=label_features.to(x.dtype))
