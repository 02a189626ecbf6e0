"""Attention layers of the pseudo-3D denoiser: along depth, linear per slice, and full per slice.

The denoiser is a video U-Net that treats depth D as the "frame" axis: convolutions are in-plane only, so
information moves between slices exclusively through :class:`DepthAttention` (with a T5 relative position bias
and, optionally, rotary embeddings). Layout of every feature map: (B, C, D, H, W).

Adapted from lucidrains/video-diffusion-pytorch (MIT), as used by the Med-LSDM reference
(``ddpm/semantic_diffusion.py``); rewritten on ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, D, H, W) maps, with a gain and no bias (reference ``LayerNorm``).

    Args:
        dim: number of channels C.
        eps: added to the variance.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, D, H, W) → (B, C, D, H, W)."""
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma


class RelativePositionBias(nn.Module):
    """T5 bucketed relative position bias, one learned scalar per (bucket, head).

    Relative distances below ``num_buckets / 4`` get their own bucket (per direction); larger ones share
    log-spaced buckets up to ``max_distance`` (Raffel et al., https://arxiv.org/abs/1910.10683).

    Args:
        heads: number of attention heads.
        num_buckets: buckets over both directions.
        max_distance: distance beyond which all positions share the last bucket.
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32) -> None:
        super().__init__()
        if num_buckets < 4 or max_distance < num_buckets // 4 + 1:
            raise ValueError(
                f"need num_buckets >= 4 and max_distance > num_buckets/4, got {num_buckets}, {max_distance}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        """Map integer relative positions (key − query) to bucket ids in [0, num_buckets)."""
        n = -relative_position
        half = self.num_buckets // 2
        ret = (n < 0).long() * half
        n = n.abs()
        max_exact = half // 2
        is_small = n < max_exact
        # clamp avoids log(0) on the small positions, which take the other branch anyway
        val_if_large = (
            max_exact
            + (
                torch.log(n.clamp(min=1).float() / max_exact)
                / math.log(self.max_distance / max_exact)
                * (half - max_exact)
            ).long()
        )
        val_if_large = val_if_large.clamp(max=half - 1)
        return ret + torch.where(is_small, n, val_if_large)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        """Bias for a length-``n`` sequence: (heads, n, n), added to the attention logits."""
        pos = torch.arange(n, dtype=torch.long, device=device)
        rel = pos[None, :] - pos[:, None]  # key position minus query position
        return rearrange(self.relative_attention_bias(self.bucket(rel)), "i j h -> h i j")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the first ``dim`` features of queries/keys (interleaved pairs).

    Su et al., https://arxiv.org/abs/2104.09864; same layout as ``rotary_embedding_torch.RotaryEmbedding``,
    which the reference uses with ``dim=min(32, dim_head)``.

    Args:
        dim: number of rotated features (even).
        theta: frequency base.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        # not persistent: a fixed function of dim, so checkpoints stay independent of it
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x: (..., n, d) by its position along n; features beyond ``dim`` pass through."""
        rot = self.inv_freq.numel() * 2
        pos = torch.arange(x.shape[-2], device=x.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(pos, self.inv_freq).repeat_interleave(2, dim=-1)  # (n, rot)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
        x_rot = x_rot * freqs.cos().to(x.dtype) + rotated * freqs.sin().to(x.dtype)
        return torch.cat((x_rot, x_pass), dim=-1)


class MultiHeadAttention(nn.Module):
    """Softmax attention over the token axis of (N, n, C) sequences.

    Args:
        dim: token width C.
        heads: number of heads.
        dim_head: width of each head.
        rotary: optional rotary embedding applied to queries and keys.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.rotary = rotary
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, n, C), bias: (heads, n, n) or None → (N, n, C)."""
        q, k, v = rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class DepthAttention(nn.Module):
    """Pre-norm residual attention along depth, independently at every in-plane position (the "temporal" attention).

    Args:
        dim: channels C.
        heads: number of heads.
        dim_head: width of each head.
        rotary: optional rotary embedding (shared between all depth-attention layers, as in the reference).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, rotary)

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, D, H, W), pos_bias: (heads, D, D) → (B, C, D, H, W)."""
        b, _, d, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c d h w -> (b h w) d c")
        out = self.attn(tokens, pos_bias)
        return x + rearrange(out, "(b h w) d c -> b c d h w", b=b, h=h, w=w)


class SpatialLinearAttention(nn.Module):
    """Pre-norm residual linear attention over the H×W positions of each slice (Katharopoulos-style, O(HW)).

    Softmax over features for queries and over positions for keys, as in the reference.

    Args:
        dim: channels C.
        heads: number of heads.
        dim_head: width of each head.
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, D, H, W) → (B, C, D, H, W)."""
        b, _, d, h, w = x.shape
        slices = rearrange(self.norm(x), "b c d h w -> (b d) c h w")
        q, k, v = rearrange(self.to_qkv(slices), "n (three h c) x y -> three n h c (x y)", three=3, h=self.heads)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("n h d p, n h e p -> n h d e", k, v)
        out = torch.einsum("n h d e, n h d p -> n h e p", context, q)
        out = self.to_out(rearrange(out, "n h c (x y) -> n (h c) x y", x=h, y=w))
        return x + rearrange(out, "(b d) c h w -> b c d h w", b=b)


class SpatialAttention(nn.Module):
    """Pre-norm residual full softmax attention over the H×W tokens of each slice (used in the middle block).

    Args:
        dim: channels C.
        heads: number of heads.
        dim_head: width of each head.
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, D, H, W) → (B, C, D, H, W)."""
        b, _, d, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c d h w -> (b d) (h w) c")
        out = self.attn(tokens)
        return x + rearrange(out, "(b d) (h w) c -> b c d h w", b=b, h=h, w=w)
