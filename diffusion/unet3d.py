"""Pseudo-3D U-Net denoisers: ``Unet3DSPADE`` (the reference's ``Unet3D_SPADE``) and the plain ``Unet3D``.

Architecture of reference-notes §2.1, a video U-Net with depth D as the frame axis:

* every conv is (1, k, k) and down/up-sampling is in-plane only, so D is the same at every level and slices
  exchange information only through depth attention (T5 relative position bias, optional rotary embedding);
* init conv (1, 7, 7) → depth attention (its output is kept as the long skip ``r``);
* per encoder level: ResBlock (GroupNorm + time FiLM) → spatial linear attention → depth attention → downsample;
* middle: ResBlock → full spatial attention → depth attention → ResBlock;
* per decoder level: concat skip → ResBlock → spatial linear attention → depth attention → upsample;
* out: concat ``r`` → ResBlock (no time) → 1×1×1 conv.

In ``Unet3DSPADE`` the middle and decoder ResBlocks normalise with SPADE on the label features (the encoder never
sees the labels, as in the reference) and, unlike the reference, the middle blocks also take the time embedding.
Widths are ``dim · dim_mults`` (the reference tied ``dim`` to the latent size; here they are independent).
``Unet3D`` has GroupNorm everywhere and takes the label features concatenated to its input (``conditioning=
"concat"``) or nothing (``"none"``).

Adapted from lucidrains/video-diffusion-pytorch (MIT) via the Med-LSDM reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from diffusion.attention import (
    DepthAttention,
    RelativePositionBias,
    RotaryEmbedding,
    SpatialAttention,
    SpatialLinearAttention,
)
from diffusion.blocks import ResBlock, SinusoidalPosEmb, downsample, upsample
from diffusion.denoiser_base import Denoiser


def coordinate_grid(size: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(3, D, H, W) voxel-centre coordinates of a (D, H, W) grid, each axis on ``linspace(-1, 1, n)``."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class Unet3D(Denoiser):
    """Pseudo-3D U-Net denoiser on VQ-GAN latents.

    Args:
        channels: latent channels C.
        label_nc: K, one-hot classes of the label map.
        latent_factor: (fd, fh, fw) of the VQ-GAN, used to align the label encoder with the latent grid.
        dim: base width (reference: 64).
        dim_mults: width multipliers per level; ``len(dim_mults) - 1`` in-plane downsamplings, so the latent H and W
            must be divisible by ``2 ** (len(dim_mults) - 1)``.
        conditioning: "spade", "concat" or "none" (see :class:`~diffusion.denoiser_base.Denoiser`).
        init_dim: width after the init conv (default ``dim``).
        init_kernel_size: in-plane kernel of the init conv (odd; reference: 7).
        attn_heads: heads of every attention layer (reference: 8).
        attn_dim_head: width per head (reference: 32).
        resnet_groups: GroupNorm groups (reference: 8).
        use_linear_attn: add spatial linear attention at every level (reference: True).
        use_rotary: rotary embedding in depth attention, on top of the relative position bias (reference: True).
        rel_pos_buckets: T5 buckets of the depth position bias.
        rel_pos_max_distance: T5 max distance of the depth position bias.
        spade_hidden: hidden channels of each SPADE (reference: 128).
        label_encoder: "conv" or "pool".
        label_channels: conv label-encoder output channels (the reference's ``spade_input_channel``).
        label_hidden: conv label-encoder hidden channels.
        position_input: concatenate three fixed coordinate channels (D, H, W each on ``linspace(-1, 1)``) to the
            input. Convolutions are in-plane only and depth attention sees relative positions only, so without
            them nothing tells the network where along depth it is; a generator whose input is pure noise (the
            label diffusion) then places anatomy at any depth, wrapped or doubled. Stage 2 gets its positions
            from the label map and leaves this off.
        extra_channels: see :class:`~diffusion.denoiser_base.Denoiser` (they widen the init conv).
    """

    def __init__(
        self,
        channels: int,
        label_nc: int,
        latent_factor: Sequence[int],
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        conditioning: str = "concat",
        init_dim: int | None = None,
        init_kernel_size: int = 7,
        attn_heads: int = 8,
        attn_dim_head: int = 32,
        resnet_groups: int = 8,
        use_linear_attn: bool = True,
        use_rotary: bool = True,
        rel_pos_buckets: int = 32,
        rel_pos_max_distance: int = 32,
        spade_hidden: int = 128,
        label_encoder: str = "conv",
        label_channels: int = 64,
        label_hidden: Sequence[int] = (64, 128),
        position_input: bool = False,
        extra_channels: int = 0,
    ) -> None:
        super().__init__(
            channels, label_nc, latent_factor, conditioning, label_encoder, label_channels, label_hidden,
            extra_channels=extra_channels,
        )  # fmt: skip
        dim_mults = [int(m) for m in dim_mults]
        if dim < 1 or not dim_mults or min(dim_mults) < 1:
            raise ValueError(f"dim and dim_mults must be positive, got dim={dim}, dim_mults={dim_mults}")
        if init_kernel_size % 2 == 0:
            raise ValueError(f"init_kernel_size must be odd, got {init_kernel_size}")
        if attn_heads < 1 or attn_dim_head < 2:
            raise ValueError(f"need attn_heads >= 1 and attn_dim_head >= 2, got {attn_heads}, {attn_dim_head}")
        init_dim = init_dim or dim
        self.position_input = bool(position_input)
        self.num_downsamples = len(dim_mults) - 1

        spade_channels = self.label_channels if conditioning == "spade" else None
        time_dim = 4 * dim

        def block(d_in: int, d_out: int, time: bool = True, spade: bool = False) -> ResBlock:
            return ResBlock(
                d_in, d_out, time_dim if time else None, resnet_groups, spade_channels if spade else None, spade_hidden
            )

        def depth_attn(d: int) -> DepthAttention:
            return DepthAttention(d, attn_heads, attn_dim_head, self.rotary)

        def linear_attn(d: int) -> nn.Module:
            return SpatialLinearAttention(d, attn_heads, attn_dim_head) if use_linear_attn else nn.Identity()

        self.rotary = RotaryEmbedding(min(32, attn_dim_head - attn_dim_head % 2)) if use_rotary else None
        self.rel_pos_bias = RelativePositionBias(attn_heads, rel_pos_buckets, rel_pos_max_distance)

        # 1. input: concat mode widens the init conv by the label-feature channels (extra inputs: see the base)
        in_ch = self.in_channels + (self.label_channels if conditioning == "concat" else 0)
        in_ch += 3 if position_input else 0
        pad = init_kernel_size // 2
        self.init_conv = nn.Conv3d(in_ch, init_dim, (1, init_kernel_size, init_kernel_size), padding=(0, pad, pad))
        self.init_depth_attn = depth_attn(init_dim)

        # 2. time: sinusoidal(dim) → Linear → GELU → Linear, width 4·dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        use_spade = conditioning == "spade"

        # 3. encoder: no label input (as in the reference)
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        block(d_in, d_out),
                        linear_attn(d_out),
                        depth_attn(d_out),
                        nn.Identity() if last else downsample(d_out),
                    ]
                )
            )

        # 4. middle: SPADE + time (the reference's mid blocks dropped the time embedding)
        mid = dims[-1]
        self.mid_block1 = block(mid, mid, spade=use_spade)
        self.mid_spatial_attn = SpatialAttention(mid, attn_heads, attn_dim_head)
        self.mid_depth_attn = depth_attn(mid)
        self.mid_block2 = block(mid, mid, spade=use_spade)

        # 5. decoder: concat the matching encoder output, SPADE + time
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(
                nn.ModuleList(
                    [
                        block(2 * d_out, d_in, spade=use_spade),
                        linear_attn(d_in),
                        depth_attn(d_in),
                        nn.Identity() if last else upsample(d_in),
                    ]
                )
            )

        # 6. output: concat the init features, a time-free GroupNorm block, 1×1×1 projection
        self.final_block = block(dim + init_dim, dim, time=False)
        self.final_conv = nn.Conv3d(dim, channels, 1)

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """In-plane sizes are halved ``len(dim_mults) - 1`` times; depth never."""
        return (1, 2**self.num_downsamples, 2**self.num_downsamples)

    @property
    def shares_latent(self) -> bool:
        """SPADE conditioning keeps labels out of the encoder: k label maps can share one encoder pass."""
        return self.conditioning == "spade"

    def shared_copies(
        self, x: torch.Tensor, label_features: torch.Tensor | None, time_offset: torch.Tensor | None = None
    ) -> int:
        """How many label maps share each latent: label features (k·B, ...) for x (B, ...) → k (1 normally).

        Only SPADE conditioning keeps labels out of the encoder, so only there can k > 1 be shared.
        """
        if label_features is None or label_features.shape[0] == x.shape[0]:
            return 1
        k, rem = divmod(label_features.shape[0], x.shape[0])
        if rem or self.conditioning != "spade" or (time_offset is not None and time_offset.shape[0] != x.shape[0]):
            raise ValueError(
                f"label features of batch {label_features.shape[0]} for latents of batch {x.shape[0]}: "
                "sharing the latent between label maps needs SPADE conditioning and a multiple of the batch"
            )
        return k

    def predict(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        label_features: torch.Tensor | None,
        time_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, C, D, H, W), t: (B,), label_features: (B, C_label, D, H, W) or None → (B, C, D, H, W).

        ``time_offset`` (B, 4·dim), optional, is added to the time embedding: how a global condition such as the
        label stage's attribute vector (``diffusion.label_diffusion``) reaches every ResBlock.
        """
        div = 2**self.num_downsamples
        if x.shape[3] % div or x.shape[4] % div:
            raise ValueError(
                f"latent in-plane size {tuple(x.shape[3:])} must be divisible by {div} "
                f"(2 ** (len(dim_mults) - 1)); use fewer dim_mults or larger blocks"
            )
        if self.conditioning != "none" and label_features is None:
            raise ValueError("this denoiser is conditional: label features are required")
        # k label maps per latent (guidance: conditional and null map): the label-free encoder runs once per
        # latent and its outputs are repeated k times (``torch.cat`` order: all items of map 1, then map 2, ...)
        k = self.shared_copies(x, label_features, time_offset)
        pos_bias = self.rel_pos_bias(x.shape[2], x.device)
        spade_feats = label_features if self.conditioning == "spade" else None
        if self.conditioning == "concat":
            x = torch.cat((x, label_features.to(x.dtype)), dim=1)
        if self.position_input:
            grid = coordinate_grid(x.shape[2:], x.device, x.dtype)
            x = torch.cat((x, grid.expand(x.shape[0], -1, -1, -1, -1)), dim=1)

        x = self.init_conv(x)
        x = self.init_depth_attn(x, pos_bias)
        r = x
        temb = self.time_mlp(t)
        if time_offset is not None:
            temb = temb + time_offset.to(temb.dtype)

        skips = []
        for res, lin_attn, d_attn, down in self.downs:
            x = d_attn(lin_attn(res(x, temb)), pos_bias)
            skips.append(x)
            x = down(x)
        if k > 1:
            x, r, temb = x.repeat(k, 1, 1, 1, 1), r.repeat(k, 1, 1, 1, 1), temb.repeat(k, 1)
            skips = [s.repeat(k, 1, 1, 1, 1) for s in skips]

        x = self.mid_block1(x, temb, spade_feats)
        x = self.mid_depth_attn(self.mid_spatial_attn(x), pos_bias)
        x = self.mid_block2(x, temb, spade_feats)

        for res, lin_attn, d_attn, up in self.ups:
            x = res(torch.cat((x, skips.pop()), dim=1), temb, spade_feats)
            x = up(d_attn(lin_attn(x), pos_bias))

        x = self.final_block(torch.cat((x, r), dim=1))
        return self.final_conv(x)


class Unet3DSPADE(Unet3D):
    """Med-LSDM's ``Unet3D_SPADE``: :class:`Unet3D` with SPADE-conditioned middle and decoder blocks.

    Takes the same arguments as :class:`Unet3D` except ``conditioning``, which is fixed to "spade".
    """

    def __init__(self, channels: int, label_nc: int, latent_factor: Sequence[int], **kwargs: object) -> None:
        if "conditioning" in kwargs:
            raise ValueError("Unet3DSPADE always uses conditioning='spade'; use Unet3D for the others")
        super().__init__(channels, label_nc, latent_factor, conditioning="spade", **kwargs)
