"""Label encoder: one-hot label map at image resolution → label features on the VQ-GAN latent grid.

The reference's ``SegConv3D`` used (1, 3, 3) kernels with ``padding=1`` on all axes, so depth grew by 2 at every
conv (32 → 11 instead of 8) and the features it fed to SPADE were shifted along depth against the latent slices,
the first one made from zero padding only (reference-notes §2.2, §6 item 5). Here the convs pad in-plane only and
the pooling windows along each axis tile the image exactly like the VQ-GAN's downsampling: latent voxel
(i, j, k) sees image slices ``fd·i … fd·i + fd − 1`` and nothing else along depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.blocks import in_plane_conv

LABEL_ENCODERS = ("conv", "pool")


def _check_factor(latent_factor: Sequence[int]) -> tuple[int, int, int]:
    factor = tuple(int(f) for f in latent_factor)
    if len(factor) != 3 or any(f < 1 or f & (f - 1) for f in factor):
        raise ValueError(f"latent_factor must be three powers of two (fd, fh, fw), got {list(latent_factor)}")
    return factor


class LabelEncoder(nn.Module):
    """Encode a one-hot label map (B, K, D, H, W) to latent-aligned features (B, C, D/fd, H/fh, W/fw).

    ``mode="conv"`` (the reference's ``segconv``): per stage an in-plane conv (1, 3, 3) + ReLU, then a 2× max-pool
    along the axes that still need downsampling; a final in-plane conv + ReLU gives ``out_channels``. With
    ``latent_factor=(4, 4, 4)`` and ``hidden=(64, 128)`` this is the reference's conv→64, pool, conv→128, pool,
    conv→out, minus its depth padding. ``mode="pool"``: average pooling of the one-hot map over each latent voxel's
    image block, i.e. class fractions (C = K, no parameters).

    Args:
        label_nc: K, classes of the one-hot map.
        latent_factor: (fd, fh, fw), the VQ-GAN's downsampling per axis (powers of two).
        mode: "conv" or "pool".
        out_channels: C for ``mode="conv"`` (the reference's ``spade_input_channel``; ignored for "pool").
        hidden: channels of the conv stages; the last value repeats if there are more stages than entries.
    """

    def __init__(
        self,
        label_nc: int,
        latent_factor: Sequence[int],
        mode: str = "conv",
        out_channels: int = 64,
        hidden: Sequence[int] = (64, 128),
    ) -> None:
        super().__init__()
        if mode not in LABEL_ENCODERS:
            raise ValueError(f"label encoder mode must be one of {LABEL_ENCODERS}, got {mode!r}")
        if label_nc < 1:
            raise ValueError(f"label_nc must be >= 1, got {label_nc}")
        self.label_nc = label_nc
        self.latent_factor = _check_factor(latent_factor)
        self.mode = mode
        if mode == "pool":
            self.out_channels = label_nc
            self.net = None
            return
        hidden = [int(h) for h in hidden]
        if out_channels < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"out_channels and hidden must be positive, got {out_channels}, {hidden}")
        self.out_channels = out_channels
        n_stages = max(int(math.log2(f)) for f in self.latent_factor)
        layers: list[nn.Module] = []
        ch = label_nc
        for s in range(n_stages):
            width = hidden[min(s, len(hidden) - 1)]
            # pool an axis by 2 while its remaining factor is > 1: windows stay aligned with the latent grid
            pool = tuple(2 if f >> s > 1 else 1 for f in self.latent_factor)
            layers += [in_plane_conv(ch, width), nn.ReLU(), nn.MaxPool3d(pool, pool)]
            ch = width
        layers += [in_plane_conv(ch, out_channels), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        """seg: (B, K, D, H, W) one-hot (or all-zero "null") map → (B, C, D/fd, H/fh, W/fw)."""
        if seg.dim() != 5 or seg.shape[1] != self.label_nc:
            raise ValueError(f"seg must be (B, {self.label_nc}, D, H, W), got {tuple(seg.shape)}")
        if any(s % f for s, f in zip(seg.shape[2:], self.latent_factor)):
            raise ValueError(
                f"label map size {tuple(seg.shape[2:])} is not divisible by the latent factor {self.latent_factor}"
            )
        if self.net is None:
            return F.avg_pool3d(seg, self.latent_factor, self.latent_factor)
        return self.net(seg)
