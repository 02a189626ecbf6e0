"""SPADE normalisation for 3D feature maps, reusable by the VQ-GAN decoder and the diffusion U-Net.

SPADE (Park et al. 2019, https://arxiv.org/abs/1903.07291): normalise the features without learned affine
parameters, then scale and shift them with maps predicted from the label map, so the semantic layout is
re-injected after every normalisation instead of being washed out by it. This is the 3D form used by
Med-LSDM (``SPADEGroupNorm3D``, reference-notes §1.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vq_gan_3d.blocks import SamePadConv3d, group_count


class SPADE(nn.Module):
    """Parameter-free GroupNorm followed by a label-conditioned scale and shift.

    ``out = GroupNorm(x) * (1 + gamma(seg)) + beta(seg)`` where ``seg`` is nearest-resized to ``x``'s grid and
    passed through a shared conv + ReLU (``hidden`` channels) and two convs for ``gamma`` and ``beta``. The
    reference kernel ``(1, 3, 3)`` mixes in-plane only (depth is the slice axis); the convs zero-pad.

    Args:
        norm_channels: channels C of the normalised features.
        label_nc: channels K of the one-hot label map.
        hidden: channels of the shared hidden map (128 in the paper; at full resolution this map dominates
            memory, about 1 GB per 32x256x256 sample in fp32).
        kernel: odd kernel sizes (kD, kH, kW) of the three convs.
        num_groups: GroupNorm groups, capped at ``norm_channels`` (reference: 8).
        eps: GroupNorm epsilon.
    """

    def __init__(
        self,
        norm_channels: int,
        label_nc: int,
        hidden: int = 128,
        kernel: tuple[int, int, int] | list[int] = (1, 3, 3),
        num_groups: int = 8,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        kernel = tuple(int(k) for k in kernel)
        if len(kernel) != 3 or any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel must be three odd positive ints (kD, kH, kW), got {list(kernel)}")
        if norm_channels < 1 or label_nc < 1 or hidden < 1:
            raise ValueError(
                f"norm_channels, label_nc and hidden must be >= 1, got {norm_channels}, {label_nc}, {hidden}"
            )
        padding = tuple(k // 2 for k in kernel)
        self.label_nc = label_nc
        self.norm = nn.GroupNorm(group_count(norm_channels, num_groups), norm_channels, eps=eps, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv3d(label_nc, hidden, kernel, padding=padding), nn.ReLU())
        self.mlp_gamma = nn.Conv3d(hidden, norm_channels, kernel, padding=padding)
        self.mlp_beta = nn.Conv3d(hidden, norm_channels, kernel, padding=padding)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` and modulate it by ``seg``.

        Args:
            x: (B, C, d, h, w) features.
            seg: (B, K, D, H, W) one-hot (or soft) label map at any resolution; nearest-resized to (d, h, w).

        Returns:
            (B, C, d, h, w).
        """
        if seg.dim() != 5 or seg.shape[0] != x.shape[0] or seg.shape[1] != self.label_nc:
            raise ValueError(
                f"seg must be (B={x.shape[0]}, label_nc={self.label_nc}, D, H, W), got {tuple(seg.shape)}"
            )
        seg = F.interpolate(seg.to(x.dtype), size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return self.norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


SPADEGroupNorm3D = SPADE  # the reference's name


class SPADEResBlock3D(nn.Module):
    """Residual block with SPADE norms: SPADE -> SiLU -> conv3 -> SPADE -> SiLU -> conv3, plus the skip.

    Args:
        in_channels: input channels.
        out_channels: output channels; a 3x3x3 conv projects the skip when they differ.
        label_nc: one-hot label channels.
        spade_hidden: hidden channels of each SPADE.
        spade_kernel: SPADE conv kernel.
        num_groups: SPADE GroupNorm groups.
        padding_type: ``F.pad`` mode of the 3x3x3 convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        label_nc: int,
        spade_hidden: int = 128,
        spade_kernel: tuple[int, int, int] | list[int] = (1, 3, 3),
        num_groups: int = 8,
        padding_type: str = "replicate",
    ) -> None:
        super().__init__()
        self.norm1 = SPADE(in_channels, label_nc, spade_hidden, spade_kernel, num_groups)
        self.conv1 = SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
        self.norm2 = SPADE(out_channels, label_nc, spade_hidden, spade_kernel, num_groups)
        self.conv2 = SamePadConv3d(out_channels, out_channels, 3, padding_type=padding_type)
        self.skip = (
            SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, d, h, w), seg: (B, K, D, H, W) -> (B, C_out, d, h, w)."""
        h = self.conv1(F.silu(self.norm1(x, seg)))
        h = self.conv2(F.silu(self.norm2(h, seg)))
        return self.skip(x) + h
