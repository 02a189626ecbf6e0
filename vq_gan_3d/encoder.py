"""3D VQ-GAN encoder (reference-notes §1.2): strided same-padded convs with one ResBlock per stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vq_gan_3d.blocks import ResBlock3D, SamePadConv3d, log2_factors, normalize


class Encoder3D(nn.Module):
    """Image volume -> feature map at ``1 / downsample`` resolution.

    Stage ``i`` doubles the channels (``n_hiddens * 2**(i+1)``) with a k=4 conv that has stride 2 on every axis
    that still needs downsampling (stride 1 elsewhere), then one ResBlock; a final GroupNorm + SiLU follows.
    The number of stages is the largest ``log2`` factor.

    Args:
        image_channels: input channels (1 for CT/MR).
        n_hiddens: channels after the first conv.
        downsample: per-axis factors (D, H, W), powers of two, e.g. ``[4, 4, 4]``.
        num_groups: GroupNorm groups (capped at the channel count; must divide it).
        padding_type: ``F.pad`` mode of all convolutions.
        checkpointing: activation checkpointing of every ResBlock (recomputed in the backward pass).
    """

    def __init__(
        self,
        image_channels: int,
        n_hiddens: int,
        downsample: list[int] | tuple[int, int, int],
        num_groups: int = 32,
        padding_type: str = "replicate",
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if image_channels < 1 or n_hiddens < 1:
            raise ValueError(f"image_channels and n_hiddens must be >= 1, got {image_channels}, {n_hiddens}")
        self.factors = tuple(int(f) for f in downsample)
        remaining = list(log2_factors(downsample))
        self.conv_first = SamePadConv3d(image_channels, n_hiddens, 3, padding_type=padding_type)
        self.stages = nn.ModuleList()
        channels = n_hiddens
        for i in range(max(remaining)):
            out_channels = n_hiddens * 2 ** (i + 1)
            stride = tuple(2 if r > 0 else 1 for r in remaining)
            stage = nn.Module()
            stage.down = SamePadConv3d(channels, out_channels, 4, stride=stride, padding_type=padding_type)
            stage.res = ResBlock3D(out_channels, out_channels, num_groups, padding_type, checkpointing)
            self.stages.append(stage)
            remaining = [max(r - 1, 0) for r in remaining]
            channels = out_channels
        self.final_norm = normalize(channels, num_groups)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, n_hiddens * 2**max_ds, D/fd, H/fh, W/fw).

        Raises:
            ValueError: a spatial size not divisible by its downsampling factor.
        """
        if x.dim() != 5 or any(s % f for s, f in zip(x.shape[2:], self.factors)):
            raise ValueError(
                f"encoder input must be (B, C, D, H, W) with D, H, W divisible by {list(self.factors)}; "
                f"got {tuple(x.shape)}"
            )
        h = self.conv_first(x)
        for stage in self.stages:
            h = stage.res(stage.down(h))
        return F.silu(self.final_norm(h))
