"""Convolutional building blocks of the pseudo-3D denoiser: time embedding, residual blocks, in-plane resampling.

Every convolution has kernel (1, k, k): it mixes in-plane only, never across slices (depth D is the "frame" axis
of the video U-Net; slices talk through depth attention). Layout (B, C, D, H, W).

Adapted from lucidrains/video-diffusion-pytorch (MIT) via the Med-LSDM reference (``SDEResBlock``,
``SDDResBlock``, ``ResnetBlock``, ``Downsample``/``Upsample`` in ``ddpm/semantic_diffusion.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vq_gan_3d.spade import SPADE


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer/DDPM.

    Args:
        dim: embedding width (even).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) int or float timesteps → (B, dim) float32."""
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def in_plane_conv(dim_in: int, dim_out: int, kernel: int = 3) -> nn.Conv3d:
    """Conv3d with kernel (1, k, k) and same padding in-plane (no mixing across slices)."""
    return nn.Conv3d(dim_in, dim_out, (1, kernel, kernel), padding=(0, kernel // 2, kernel // 2))


def downsample(dim: int) -> nn.Conv3d:
    """Halve H and W (not D): Conv3d kernel (1, 4, 4), stride (1, 2, 2)."""
    return nn.Conv3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


def upsample(dim: int) -> nn.ConvTranspose3d:
    """Double H and W (not D): ConvTranspose3d kernel (1, 4, 4), stride (1, 2, 2)."""
    return nn.ConvTranspose3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


class ResBlock(nn.Module):
    """Pre-activation residual block: norm → SiLU → conv → norm → time scale-shift → SiLU → conv, plus a skip.

    The norms are GroupNorm (encoder side, :class:`SDEResBlock`) or SPADE (decoder side, :class:`SDDResBlock`). The
    time embedding modulates the second norm's output as ``h·(1 + scale) + shift`` (FiLM). The skip is a 1×1×1 conv
    when the width changes.

    Args:
        dim_in: input channels.
        dim_out: output channels.
        time_emb_dim: width of the time embedding, or None for a block without time conditioning.
        groups: GroupNorm groups (reference: 8).
        label_channels: channels of the label features; None → plain GroupNorm, otherwise SPADE norms.
        spade_hidden: hidden channels of each SPADE's shared conv (reference: 128).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        time_emb_dim: int | None = None,
        groups: int = 8,
        label_channels: int | None = None,
        spade_hidden: int = 128,
    ) -> None:
        super().__init__()
        for c in (dim_in, dim_out):
            if c % groups:
                raise ValueError(f"channels {c} not divisible by resnet_groups={groups}")
        self.spade = label_channels is not None

        def norm(channels: int) -> nn.Module:
            if label_channels is None:
                return nn.GroupNorm(groups, channels)
            return SPADE(channels, label_channels, hidden=spade_hidden, kernel=(1, 3, 3), num_groups=groups)

        self.norm1 = norm(dim_in)
        self.conv1 = in_plane_conv(dim_in, dim_out)
        self.norm2 = norm(dim_out)
        self.conv2 = in_plane_conv(dim_out, dim_out)
        self.time_mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, 2 * dim_out)) if time_emb_dim is not None else None
        )
        self.skip = nn.Conv3d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def _norm(self, norm: nn.Module, h: torch.Tensor, label_features: torch.Tensor | None) -> torch.Tensor:
        if not self.spade:
            return norm(h)
        if label_features is None:
            raise ValueError("a SPADE block needs label_features (B, C_label, D, h, w)")
        return norm(h, label_features)

    def forward(
        self, x: torch.Tensor, time_emb: torch.Tensor | None = None, label_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C_in, D, H, W), time_emb: (B, T), label_features: (B, C_label, D, h', w') → (B, C_out, D, H, W).

        GroupNorm blocks ignore ``label_features``, so both kinds share one call signature.
        """
        h = self.conv1(F.silu(self._norm(self.norm1, x, label_features)))
        h = self._norm(self.norm2, h, label_features)
        if self.time_mlp is not None:
            if time_emb is None:
                raise ValueError("this block is time-conditioned: time_emb is required")
            scale, shift = self.time_mlp(time_emb)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class SDEResBlock(ResBlock):
    """Encoder-side block (GroupNorm + time); the reference's encoder path never sees the label map.

    Args:
        dim_in: input channels.
        dim_out: output channels.
        time_emb_dim: width of the time embedding, or None.
        groups: GroupNorm groups.
    """

    def __init__(self, dim_in: int, dim_out: int, time_emb_dim: int | None = None, groups: int = 8) -> None:
        super().__init__(dim_in, dim_out, time_emb_dim, groups)


class SDDResBlock(ResBlock):
    """Decoder-side and middle block: both norms are SPADE on the label features, then the time scale-shift.

    Unlike the reference, the middle blocks are time-conditioned too (reference-notes §6 item 31).

    Args:
        dim_in: input channels.
        dim_out: output channels.
        label_channels: channels of the label features fed to SPADE.
        time_emb_dim: width of the time embedding, or None.
        groups: GroupNorm groups.
        spade_hidden: hidden channels of each SPADE's shared conv.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        label_channels: int,
        time_emb_dim: int | None = None,
        groups: int = 8,
        spade_hidden: int = 128,
    ) -> None:
        super().__init__(dim_in, dim_out, time_emb_dim, groups, label_channels, spade_hidden)
