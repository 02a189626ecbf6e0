"""Building blocks of the 3D VQ-GAN: same-padded (transposed) convolutions, GroupNorm and the residual block.

Architecture follows the TATS lineage used by Med-LSDM (reference-notes §1.4): explicit padding with a
configurable mode (``replicate`` in every published run) followed by an unpadded convolution, so borders are
extended rather than zero-filled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

PADDING_TYPES = ("replicate", "constant", "reflect", "circular")


def _triple(value: int | list[int] | tuple[int, ...], name: str) -> tuple[int, int, int]:
    """Expand an int to a 3-tuple, or check that a sequence has exactly three positive ints."""
    values = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return values  # type: ignore[return-value]


def _conv_geometry(
    kernel_size: int | tuple[int, int, int], stride: int | tuple[int, int, int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(kernel, stride) as 3-tuples; the kernel must cover the stride on every axis, or voxels would be skipped."""
    kernel = _triple(kernel_size, "kernel_size")
    strides = _triple(stride, "stride")
    if any(k < s for k, s in zip(kernel, strides)):
        raise ValueError(f"kernel_size {kernel} must be >= stride {strides} on every axis")
    return kernel, strides


def _same_pad(kernel_size: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad amounts for a total padding of ``k - s`` per axis, the odd pixel on the leading side (as TATS).

    F.pad lists the *last* axis first, hence the reversal.
    """
    pad: list[int] = []
    for k, s in zip(kernel_size[::-1], stride[::-1]):
        p = k - s
        pad += [p // 2 + p % 2, p // 2]
    return tuple(pad)


def check_padding_type(padding_type: str) -> str:
    """Return ``padding_type`` if ``F.pad`` accepts it, else raise ValueError."""
    if padding_type not in PADDING_TYPES:
        raise ValueError(f"padding_type must be one of {PADDING_TYPES}, got {padding_type!r}")
    return padding_type


class SamePadConv3d(nn.Module):
    """3D convolution whose output size is ``ceil(input / stride)``, padding with ``padding_type``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or (kD, kH, kW); must be >= the stride on every axis.
        stride: int or (sD, sH, sW).
        bias: add a bias.
        padding_type: ``F.pad`` mode; ``replicate`` as in the reference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
        padding_type: str = "replicate",
    ) -> None:
        super().__init__()
        kernel, strides = _conv_geometry(kernel_size, stride)
        self.padding_type = check_padding_type(padding_type)
        self.pad = _same_pad(kernel, strides)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D/sD, H/sH, W/sW)."""
        x = F.pad(x, self.pad, mode=self.padding_type)
        conv = self.conv
        # On the CPU, PyTorch sends small fp32 3D convs (batch * C * D * H <= 20480) to its unblocked
        # slow_conv3d, which is much slower than oneDNN at the sizes of the tiny models; call oneDNN directly.
        # Same convolution, another summation order (fp32 round-off).
        if _onednn_fp32(x, conv.weight):
            bias = conv.bias
            return torch.mkldnn_convolution(x, conv.weight, bias, [0, 0, 0], list(conv.stride), [1, 1, 1], 1)
        return conv(x)


def _onednn_fp32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where a direct oneDNN conv applies: CPU, plain fp32 tensors, no autocast, oneDNN built in."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.layout == torch.strided
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


class SamePadConvTranspose3d(nn.Module):
    """Transposed 3D convolution that multiplies each axis by its stride (k=4, s=2 doubles it exactly).

    The input is padded by ``k - s`` with ``padding_type`` and the transposed convolution removes
    ``k - 1`` on each side, as in the reference.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or (kD, kH, kW), >= the stride on every axis.
        stride: int or (sD, sH, sW) upsampling factors.
        bias: add a bias.
        padding_type: ``F.pad`` mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 4,
        stride: int | tuple[int, int, int] = 2,
        bias: bool = True,
        padding_type: str = "replicate",
    ) -> None:
        super().__init__()
        kernel, strides = _conv_geometry(kernel_size, stride)
        self.padding_type = check_padding_type(padding_type)
        self.pad = _same_pad(kernel, strides)
        self.convt = nn.ConvTranspose3d(
            in_channels, out_channels, kernel, stride=strides, bias=bias, padding=tuple(k - 1 for k in kernel)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D*sD, H*sH, W*sW)."""
        return self.convt(F.pad(x, self.pad, mode=self.padding_type))


def group_count(channels: int, num_groups: int) -> int:
    """Groups used for ``channels``: ``min(num_groups, channels)``, which must divide ``channels``.

    Capping at ``channels`` lets tiny test/CPU models (8 or 16 channels) use the published setting
    ``num_groups=32`` unchanged: fewer channels than groups simply means one channel per group.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    groups = min(num_groups, channels)
    if channels % groups != 0:
        raise ValueError(f"num_groups={num_groups} does not divide {channels} channels; pick a divisor of {channels}")
    return groups


def normalize(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """Affine GroupNorm with eps 1e-6 (reference ``Normalize``); see :func:`group_count` for the groups."""
    return nn.GroupNorm(group_count(channels, num_groups), channels, eps=1e-6, affine=True)


class ResBlock3D(nn.Module):
    """Pre-activation residual block: GN -> SiLU -> conv3 -> GN -> SiLU -> conv3, plus the (projected) input.

    Fixes two reference defects (reference-notes §6.30): ``norm2`` normalises ``out_channels`` (the reference
    built it with ``in_channels``), and the never-applied dropout is not built.

    Args:
        in_channels: input channels.
        out_channels: output channels; a 3x3x3 conv projects the skip when they differ.
        num_groups: GroupNorm groups (capped at the channel count).
        padding_type: ``F.pad`` mode of the convolutions.
        checkpointing: recompute the block's activations in the backward pass instead of storing them
            (``torch.utils.checkpoint``; only when gradients are enabled).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int = 32,
        padding_type: str = "replicate",
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        self.norm1 = normalize(in_channels, num_groups)
        self.conv1 = SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
        self.norm2 = normalize(out_channels, num_groups)
        self.conv2 = SamePadConv3d(out_channels, out_channels, 3, padding_type=padding_type)
        self.skip = (
            SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
            if in_channels != out_channels
            else nn.Identity()
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D, H, W)."""
        if self.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def log2_factors(factors: list[int] | tuple[int, ...], name: str = "downsample") -> tuple[int, int, int]:
    """Number of 2x stages per axis for per-axis factors such as ``[4, 4, 4]`` (D, H, W).

    Raises:
        ValueError: not three factors, or a factor that is not a power of two (1 allowed: no resampling).
    """
    values = tuple(int(f) for f in factors)
    if len(values) != 3 or any(f < 1 or (f & (f - 1)) != 0 for f in values):
        raise ValueError(f"{name} must be three powers of two (D, H, W), e.g. [4, 4, 4]; got {list(factors)}")
    if max(values) == 1:
        raise ValueError(f"{name} must downsample at least one axis, got {list(factors)}")
    return tuple(int(math.log2(f)) for f in values)  # type: ignore[return-value]
