"""3D VQ-GAN decoders (reference-notes §1.3 and §1.6): normal (GroupNorm) and SPADE (label-conditioned norms).

Both share the reference's channel rule: stage 0 keeps ``n_hiddens * 2**max_us`` channels and later stages
halve, so with ``n_hiddens=16, [4,4,4]`` the decoder runs 64 -> 64 -> 32 (it is not the encoder's mirror).
Each stage is a k=4 transposed conv (stride 2 on axes that still upsample) and two ResBlocks; the output is
``tanh(conv3(h))`` in (-1, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.contract import one_hot
from vq_gan_3d.blocks import ResBlock3D, SamePadConv3d, SamePadConvTranspose3d, log2_factors, normalize
from vq_gan_3d.spade import SPADE, SPADEResBlock3D, labels_from_one_hot


def _stage_plan(n_hiddens: int, upsample: list[int] | tuple[int, ...]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(in_channels, out_channels, stride) per up stage, following the reference channel rule."""
    remaining = list(log2_factors(upsample, "upsample"))
    max_us = max(remaining)
    plan = []
    channels = n_hiddens * 2**max_us
    for i in range(max_us):
        out_channels = n_hiddens * 2 ** (max_us - i)
        plan.append((channels, out_channels, tuple(2 if r > 0 else 1 for r in remaining)))
        remaining = [max(r - 1, 0) for r in remaining]
        channels = out_channels
    return plan


class Decoder3D(nn.Module):
    """Latent feature map -> image volume with GroupNorm ResBlocks.

    Args:
        image_channels: output channels.
        n_hiddens: base width; the input has ``n_hiddens * 2**max_us`` channels.
        upsample: per-axis factors (D, H, W), powers of two.
        num_groups: GroupNorm groups (capped at the channel count; must divide it).
        padding_type: ``F.pad`` mode of all convolutions.
        checkpointing: activation checkpointing of every ResBlock (recomputed in the backward pass).
    """

    def __init__(
        self,
        image_channels: int,
        n_hiddens: int,
        upsample: list[int] | tuple[int, int, int],
        num_groups: int = 32,
        padding_type: str = "replicate",
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        plan = _stage_plan(n_hiddens, upsample)
        self.in_channels = plan[0][0]
        self.first_norm = normalize(self.in_channels, num_groups)  # reference "final_block", applied first
        self.stages = nn.ModuleList()
        for c_in, c_out, stride in plan:
            stage = nn.Module()
            stage.up = SamePadConvTranspose3d(c_in, c_out, 4, stride=stride, padding_type=padding_type)
            stage.res1 = ResBlock3D(c_out, c_out, num_groups, padding_type, checkpointing)
            stage.res2 = ResBlock3D(c_out, c_out, num_groups, padding_type, checkpointing)
            self.stages.append(stage)
        self.conv_last = SamePadConv3d(plan[-1][1], image_channels, 3, padding_type=padding_type)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C_lat, d, h, w) -> (B, image_channels, d*fd, h*fh, w*fw) in (-1, 1)."""
        h = F.silu(self.first_norm(h))
        for stage in self.stages:
            h = stage.res2(stage.res1(stage.up(h)))
        return torch.tanh(self.conv_last(h))


class SPADEDecoder3D(nn.Module):
    """Latent feature map + one-hot label map -> image volume; every norm is a :class:`SPADE`.

    The label map enters at every decoder resolution (latent, intermediate, full), nearest-resized.

    Args:
        image_channels: output channels.
        n_hiddens: base width.
        upsample: per-axis factors (D, H, W), powers of two.
        label_nc: one-hot channels K of ``seg``.
        spade_hidden: hidden channels of each SPADE (128 in the paper).
        spade_kernel: SPADE conv kernel, (1, 3, 3) = in-plane as the reference.
        num_groups: SPADE GroupNorm groups (reference: 8), capped at the channel count.
        padding_type: ``F.pad`` mode of the 3x3x3 and (transposed) convolutions.
        lookup: SPADE's first conv as a lookup over the integer label map (exact; see :mod:`vq_gan_3d.spade`);
            False convolves the one-hot map, which is faster with narrow SPADEs (few hidden channels).
        checkpointing: activation checkpointing of every SPADE ResBlock (recomputed in the backward pass).
        lookup_max_mb: bound (MB) on one SPADE call's gamma/beta lookup tables; over it that call convolves
            (see :class:`vq_gan_3d.spade.SPADE`). None: no bound.
        spade_recompute: every SPADE keeps only its (gamma, beta) and recomputes its hidden map in the backward
            pass (:class:`vq_gan_3d.spade.SPADE`'s ``recompute``).
    """

    def __init__(
        self,
        image_channels: int,
        n_hiddens: int,
        upsample: list[int] | tuple[int, int, int],
        label_nc: int,
        spade_hidden: int = 128,
        spade_kernel: tuple[int, int, int] | list[int] = (1, 3, 3),
        num_groups: int = 8,
        padding_type: str = "replicate",
        lookup: bool = True,
        checkpointing: bool = False,
        lookup_max_mb: float | None = None,
        spade_recompute: bool = False,
    ) -> None:
        super().__init__()
        plan = _stage_plan(n_hiddens, upsample)
        self.in_channels = plan[0][0]
        self.label_nc = label_nc
        self.lookup = lookup
        self.first_norm = SPADE(
            self.in_channels, label_nc, spade_hidden, spade_kernel, num_groups, lookup=lookup,
            lookup_max_mb=lookup_max_mb, recompute=spade_recompute,
        )  # fmt: skip
        args = (
            label_nc, spade_hidden, spade_kernel, num_groups, padding_type, lookup, checkpointing, lookup_max_mb,
            spade_recompute,
        )  # fmt: skip
        self.stages = nn.ModuleList()
        for c_in, c_out, stride in plan:
            stage = nn.Module()
            stage.up = SamePadConvTranspose3d(c_in, c_out, 4, stride=stride, padding_type=padding_type)
            stage.res1 = SPADEResBlock3D(c_out, c_out, *args)
            stage.res2 = SPADEResBlock3D(c_out, c_out, *args)
            self.stages.append(stage)
        self.conv_last = SamePadConv3d(plan[-1][1], image_channels, 3, padding_type=padding_type)

    def label_input(self, seg: torch.Tensor) -> torch.Tensor:
        """The form of ``seg`` every SPADE of this decoder gets, converted once per forward.

        With ``lookup`` an exactly one-hot float map becomes its (B, 1, D, H, W) class map (soft maps stay float
        and go through the conv); without it an integer class map is one-hot encoded.
        """
        if self.lookup and seg.is_floating_point():
            labels = labels_from_one_hot(seg)
            return seg if labels is None else labels[:, None]
        if not self.lookup and not seg.is_floating_point():
            return one_hot(seg, self.label_nc)
        return seg

    def forward(self, h: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Decode ``h`` conditioned on ``seg``.

        Args:
            h: (B, C_lat, d, h, w) latent features.
            seg: (B, K, D, H, W) one-hot map, or (B, 1, D, H, W) integer class map in [0, K).

        Returns:
            (B, image_channels, D, H, W) in (-1, 1).
        """
        seg = self.label_input(seg)
        h = F.silu(self.first_norm(h, seg))
        for stage in self.stages:
            h = stage.res2(stage.res1(stage.up(h), seg), seg)
        return torch.tanh(self.conv_last(h))
