"""SPADE normalisation for 3D feature maps, reusable by the VQ-GAN decoder and the diffusion U-Net.

SPADE (Park et al. 2019, https://arxiv.org/abs/1903.07291): normalise the features without learned affine
parameters, then scale and shift them with maps predicted from the label map, so the semantic layout is
re-injected after every normalisation instead of being washed out by it. This is the 3D form used by
Med-LSDM (called ``SPADEGroupNorm3D`` there, reference-notes §1.6).

Two speed-ups keep the result of the plain formulation:

* **Lookup.** When the label map is an integer class map (or an exactly one-hot float map, which the SPADE
  decoder turns into one), the first conv over the one-hot map is a lookup: at every voxel the conv adds one
  weight column per kernel offset, the one of the neighbour's class (zero-padding = a class whose column is 0).
  Label maps are piecewise constant, so the distinct neighbourhood patterns are few; the hidden map is computed
  once per pattern. The gamma/beta conv over the hidden map is then a function of the neighbourhood of hidden
  patterns, so it is computed once per distinct such neighbourhood and gathered: no full-resolution hidden map
  exists. Equal to the convs up to summation order (bit-identical when every sum is exact, tested).
  The lookup's work grows with the number of distinct neighbourhoods, so with narrow SPADEs (few hidden
  channels) the plain conv is faster: ``SPADE(..., lookup=False)`` convolves the one-hot map instead. The
  gamma/beta lookup multiplies each of the R distinct hidden patterns by every kernel offset's weights once and
  gathers one such product per offset for each of the U distinct neighbourhoods; it holds the (U, n_offsets)
  pattern table and the (R + 1) * n_offsets products, both growing with the label map's variety (U approaches
  the voxel count on a many-class map). With ``lookup_max_mb`` a call that would hold more runs the gamma/beta
  conv over the (looked-up) hidden map instead, the conv path's computation; below the bound nothing changes.
* **Fused gamma/beta.** The gamma and beta convs are one conv with ``2C`` outputs (``mlp_gamma_beta``).

:func:`modulation_cache` reuses every SPADE's (gamma, beta) across calls with the same label tensor, for
sampling, where the label map is fixed over all denoising steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from dataset.contract import one_hot
from vq_gan_3d.blocks import SamePadConv3d, group_count

# Neighbourhood codes are packed into int64 and re-ranked before they could pass this bound.
_MAX_CODE = 2**62


def resize_labels(labels: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Nearest-resize an integer class map exactly as ``F.interpolate(one_hot, mode="nearest")`` does.

    Args:
        labels: (B, D, H, W) integer class indices (< 2**24, exact in float32).
        size: target (d, h, w).

    Returns:
        (B, d, h, w) int64; the one-hot of the result is the nearest-resized one-hot of ``labels``.
    """
    if tuple(labels.shape[1:]) == tuple(size):
        return labels.long()
    # Same kernel as the one-hot path (float nearest), on one channel instead of K.
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def labels_from_one_hot(seg: torch.Tensor) -> torch.Tensor | None:
    """Class indices of an exactly one-hot map, or None if ``seg`` is not one-hot (soft maps, features).

    Args:
        seg: (B, K, D, H, W) float map.

    Returns:
        (B, D, H, W) int64 or None.
    """
    if seg.is_floating_point() and seg.dim() == 5:
        idx = seg.argmax(1)
        if torch.equal(seg, F.one_hot(idx, seg.shape[1]).movedim(-1, 1).to(seg.dtype)):
            return idx
    return None


class SPADE(nn.Module):
    """Parameter-free GroupNorm followed by a label-conditioned scale and shift.

    ``out = GroupNorm(x) * (1 + gamma(seg)) + beta(seg)`` where ``seg`` is nearest-resized to ``x``'s grid and
    passed through a shared conv + ReLU (``hidden`` channels) and one conv giving ``gamma`` and ``beta``. The
    reference kernel ``(1, 3, 3)`` mixes in-plane only (depth is the slice axis); the convs zero-pad.

    Args:
        norm_channels: channels C of the normalised features.
        label_nc: channels K of the one-hot label map (classes of an integer map).
        hidden: channels of the shared hidden map (128 in the paper; at full resolution this map dominates
            memory, about 1 GB per 32x256x256 sample in fp32).
        kernel: odd kernel sizes (kD, kH, kW) of the convs.
        num_groups: GroupNorm groups, capped at ``norm_channels`` (reference: 8).
        eps: GroupNorm epsilon.
        lookup: compute the shared conv of an integer label map as a lookup of weight columns (see the module
            docstring). False: one-hot the map and convolve, and run gamma and beta as the two halves of
            ``mlp_gamma_beta`` (faster for narrow SPADEs).
        lookup_max_mb: bound (MB) on what one call's gamma/beta lookup may hold (:func:`lookup_bytes`); a call
            over it convolves the hidden map instead. None: no bound.
        recompute: in training, keep only (gamma, beta) and recompute the hidden map (or the lookup's gathered
            rows) in the backward pass (``torch.utils.checkpoint``): the hidden map is ``hidden`` channels at the
            features' resolution, so this frees most of what a SPADE holds for one more modulation per backward.
            Same values; gradients equal within fp32 round-off.
    """

    def __init__(
        self,
        norm_channels: int,
        label_nc: int,
        hidden: int = 128,
        kernel: tuple[int, int, int] | list[int] = (1, 3, 3),
        num_groups: int = 8,
        eps: float = 1e-5,
        lookup: bool = True,
        lookup_max_mb: float | None = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        kernel = tuple(int(k) for k in kernel)
        if lookup_max_mb is not None and not lookup_max_mb >= 0:  # also refuses NaN
            raise ValueError(f"lookup_max_mb must be >= 0 or None, got {lookup_max_mb}")
        if len(kernel) != 3 or any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel must be three odd positive ints (kD, kH, kW), got {list(kernel)}")
        if norm_channels < 1 or label_nc < 1 or hidden < 1:
            raise ValueError(
                f"norm_channels, label_nc and hidden must be >= 1, got {norm_channels}, {label_nc}, {hidden}"
            )
        padding = tuple(k // 2 for k in kernel)
        self.label_nc = label_nc
        self.norm_channels = norm_channels
        self.lookup = lookup
        self.recompute = recompute
        self.lookup_max_bytes = None if lookup_max_mb is None else lookup_max_mb * 2**20
        self.norm = nn.GroupNorm(group_count(norm_channels, num_groups), norm_channels, eps=eps, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv3d(label_nc, hidden, kernel, padding=padding), nn.ReLU())
        self.mlp_gamma_beta = nn.Conv3d(hidden, 2 * norm_channels, kernel, padding=padding)
        # (key, entry) of computed modulations while a modulation_cache is active; None = no caching.
        self._modulation_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def hidden_map(self, seg: torch.Tensor, size: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """``ReLU(conv(resize(seg)))``: the shared hidden map on the (d, h, w) grid.

        Args:
            seg: (B, K, D, H, W) float map, or (B, D, H, W) / (B, 1, D, H, W) integer class map.
            size: (d, h, w).
            dtype: dtype the (one-hot) map is cast to before the conv (the features' dtype).

        Returns:
            (B, hidden, d, h, w); from the lookup path its strides are channels-last.
        """
        if seg.is_floating_point():
            seg = F.interpolate(seg.to(dtype), size=tuple(size), mode="nearest")
            return self.mlp_shared(seg)
        labels = seg[:, 0] if seg.dim() == 5 else seg
        if not self.lookup:
            dense = one_hot(labels[:, None], self.label_nc).to(dtype)
            return self.mlp_shared(F.interpolate(dense, size=tuple(size), mode="nearest"))
        return self._lookup_hidden(resize_labels(labels, size))

    def _lookup_table(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden map as a table: ``(table (U, hidden), inverse (B, d, h, w))``, hidden = table[inverse].

        A zero-padded conv over a one-hot map at voxel p is ``bias + sum_o W[:, class(p + o), o]`` over the
        kernel offsets o, with padding voxels contributing nothing. Padding with an extra class K whose weight
        column is zero gives exactly that; the sum is computed once per distinct neighbourhood pattern.
        """
        conv = self.mlp_shared[0]
        patterns, inverse = _neighbourhoods(labels, conv.kernel_size, conv.padding, fill=self.label_nc)
        # columns[o, c] = W[:, c, o] for c < K and 0 for the padding class c = K: (n_offsets, K + 1, hidden)
        columns = F.pad(conv.weight.flatten(2), (0, 0, 0, 1)).permute(2, 1, 0)
        table = conv.bias + columns[0][patterns[:, 0]]
        for o in range(1, patterns.shape[1]):
            table = table + columns[o][patterns[:, o]]
        return torch.relu(table), inverse

    def _lookup_hidden(self, labels: torch.Tensor) -> torch.Tensor:
        """``ReLU(conv(one_hot(labels)))``: labels (B, d, h, w) -> (B, hidden, d, h, w) (channels-last strides)."""
        table, inverse = self._lookup_table(labels)
        return F.embedding(inverse, table).permute(0, 4, 1, 2, 3)

    def _lookup_gamma_beta(self, labels: torch.Tensor) -> torch.Tensor:
        """The gamma/beta conv over the hidden map, also as a lookup: labels (B, d, h, w) -> (B, 2C, d, h, w).

        The hidden map is a function of each voxel's label neighbourhood, so the conv over it is a function of
        the neighbourhood of hidden-map patterns: computed once per distinct one, with the hidden map's zero
        padding as an extra all-zero table row. When that would hold more than ``lookup_max_mb``, the conv runs
        over the looked-up hidden map instead (the conv path's computation, with its memory).
        """
        table, inverse = self._lookup_table(labels)
        conv = self.mlp_gamma_beta
        patterns, inverse2 = _neighbourhoods(inverse, conv.kernel_size, conv.padding, fill=table.shape[0])
        n_offsets, out_channels = patterns.shape[1], conv.out_channels
        if self.lookup_max_bytes is not None:
            need = lookup_bytes(
                patterns.shape[0], table.shape[0], n_offsets, out_channels,
                torch.is_grad_enabled() and table.requires_grad, table.element_size(),
            )  # fmt: skip
            if need > self.lookup_max_bytes:
                return conv(F.embedding(inverse, table).permute(0, 4, 1, 2, 3))
        rows = F.pad(table, (0, 0, 0, 1))  # row R: outside the grid, where the conv zero-pads the hidden map
        # Every (hidden row, offset) product once: products[r * n_offsets + o] = rows[r] @ W[:, :, o].T, then one
        # gathered product per offset and neighbourhood. Multiplying the R + 1 hidden rows before gathering the U
        # neighbourhoods (U >= R) is fewer flops, and autograd keeps only the indices and rows for the backward.
        weight = conv.weight.flatten(2).permute(1, 2, 0).reshape(rows.shape[1], n_offsets * out_channels)
        products = (rows @ weight).view(-1, out_channels)  # ((R + 1) * n_offsets, 2C)
        # one bag of n_offsets products per neighbourhood, summed in offset order: (U, 2C) without a (U, n_offsets,
        # 2C) intermediate, and one dense gradient for ``products`` in the backward pass, not one per offset
        index = patterns * n_offsets + torch.arange(n_offsets, device=patterns.device)
        out = F.embedding_bag(index, products, mode="sum") + conv.bias
        # gather channels-first: (2C, U) columns by voxel -> (2C, B, d, h, w), each channel plane contiguous
        b, d, h, w = inverse2.shape
        gathered = out.t().index_select(1, inverse2.flatten())
        return gathered.view(-1, b, d, h, w).transpose(0, 1)

    def modulation(
        self, seg: torch.Tensor, size: torch.Size | tuple[int, ...], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + gamma, beta)`` for ``seg`` on the (d, h, w) grid in ``dtype``, each (B, C, d, h, w).

        Inside :func:`modulation_cache` the pair is computed once per distinct ``seg`` tensor and grid.
        """
        cache = self._modulation_cache
        key = None if cache is None else _cache_key(seg, size, dtype, self.parameters())
        if cache is not None:
            hit = cache.get(key)
            if hit is not None and hit[0] is seg:
                return hit[1], hit[2]
        if self.recompute and torch.is_grad_enabled():
            scale, beta = torch.utils.checkpoint.checkpoint(
                self._modulation, seg, size, dtype, use_reentrant=False
            )  # fmt: skip
        else:
            scale, beta = self._modulation(seg, size, dtype)
        if cache is not None:
            cache[key] = (seg, scale, beta)
        return scale, beta

    def _modulation(
        self, seg: torch.Tensor, size: torch.Size | tuple[int, ...], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`modulation` without the cache: ``(1 + gamma, beta)``, each (B, C, d, h, w)."""
        c = self.norm_channels
        if self.lookup and not seg.is_floating_point():
            labels = resize_labels(seg[:, 0] if seg.dim() == 5 else seg, size)
            gamma, beta = self._lookup_gamma_beta(labels).to(dtype).chunk(2, dim=1)
            return 1 + gamma, beta
        actv = self.hidden_map(seg, size, dtype)
        wgt, bias = self.mlp_gamma_beta.weight, self.mlp_gamma_beta.bias
        if self.lookup:
            gamma, beta = self.mlp_gamma_beta(actv).chunk(2, dim=1)
        else:  # two convs over the halves of the fused weights
            pad = self.mlp_gamma_beta.padding
            gamma = F.conv3d(actv, wgt[:c], bias[:c], padding=pad)
            beta = F.conv3d(actv, wgt[c:], bias[c:], padding=pad)
        return 1 + gamma, beta

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` and modulate it by ``seg``.

        Args:
            x: (B, C, d, h, w) features.
            seg: (B, K, D, H, W) one-hot (or soft) label map or features at any resolution, or a (B, 1, D, H, W)
                integer class map with values in [0, K); nearest-resized to (d, h, w).

        Returns:
            (B, C, d, h, w).
        """
        if seg.is_floating_point():
            if seg.dim() != 5 or seg.shape[0] != x.shape[0] or seg.shape[1] != self.label_nc:
                raise ValueError(
                    f"seg must be (B={x.shape[0]}, label_nc={self.label_nc}, D, H, W), got {tuple(seg.shape)}"
                )
        elif seg.dim() != 5 or seg.shape[0] != x.shape[0] or seg.shape[1] != 1:
            raise ValueError(f"an integer seg must be (B={x.shape[0]}, 1, D, H, W), got {tuple(seg.shape)}")
        scale, beta = self.modulation(seg, x.shape[2:], x.dtype)
        return self.norm(x) * scale + beta


def lookup_bytes(unique: int, rows: int, n_offsets: int, out_channels: int, grad: bool, itemsize: int) -> int:
    """Bytes the gamma/beta lookup of one call holds over ``unique`` neighbourhoods of ``rows`` hidden patterns.

    The (U, n_offsets) int64 pattern table and the bags' product indices, the ((rows + 1) * n_offsets, out_channels)
    products (twice with ``grad``: their gradient in the backward pass), and the (U, out_channels) sum before and
    after the bias.
    """
    products = (rows + 1) * n_offsets * out_channels * itemsize
    return 2 * unique * n_offsets * 8 + products * (2 if grad else 1) + 2 * unique * out_channels * itemsize


def _neighbourhoods(
    index: torch.Tensor, kernel: tuple[int, ...], padding: tuple[int, ...], fill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct kernel neighbourhoods of an integer map: ``(patterns (U, n_offsets), inverse (B, d, h, w))``.

    Args:
        index: (B, d, h, w) non-negative integers.
        kernel: (kd, kh, kw) odd kernel of a conv with ``padding`` = kernel // 2 (output grid = input grid).
        padding: (pd, ph, pw).
        fill: value of the positions outside the grid (one more than any value of ``index``).

    Returns:
        ``patterns[inverse[p]]`` lists the values at ``p + offset`` over the offsets in conv weight order.
    """
    (kd, kh, kw), (pd, ph, pw) = kernel, padding
    b, d, h, w = index.shape
    padded = F.pad(index, (pw, pw, ph, ph, pd, pd), value=fill)
    windows = torch.stack(
        [padded[:, i : i + d, j : j + h, m : m + w] for i in range(kd) for j in range(kh) for m in range(kw)], dim=-1
    ).reshape(-1, kd * kh * kw)
    # Pack each row into one int64 code (mixed radix fill + 1), re-ranking whenever the next digit could overflow.
    base = fill + 1
    code, bound = windows[:, 0], base
    for o in range(1, windows.shape[1]):
        if bound * base >= _MAX_CODE:
            uniq, code = torch.unique(code, return_inverse=True)
            bound = uniq.numel()
        code, bound = code * base + windows[:, o], bound * base
    uniq, inverse = torch.unique(code, return_inverse=True)
    first = torch.full((uniq.numel(),), windows.shape[0], dtype=torch.long, device=index.device)
    first = first.scatter_reduce(0, inverse, torch.arange(windows.shape[0], device=index.device), "amin")
    return windows[first], inverse.view(b, d, h, w)


def _cache_key(seg: torch.Tensor, size: Any, dtype: torch.dtype, params: Iterator[nn.Parameter]) -> tuple:
    """Identity, storage and version of ``seg``, the target grid, and the parameters' versions.

    ``_version`` changes on every in-place write, so an edited label map or an optimiser step is never
    served from the cache.
    """
    return (
        id(seg),
        seg.data_ptr(),
        seg._version,
        tuple(seg.shape),
        seg.dtype,
        seg.device,
        tuple(size),
        dtype,
        torch.is_grad_enabled(),
        torch.is_autocast_enabled(seg.device.type),
        tuple((p.data_ptr(), p._version) for p in params),
    )


@contextlib.contextmanager
def modulation_cache(module: nn.Module) -> Iterator[None]:
    """Reuse every SPADE's (gamma, beta) of ``module`` across calls with the same label tensor.

    Inside the context each :class:`SPADE` submodule computes its modulation once per distinct ``seg`` tensor
    (keyed on the tensor object, its storage pointer, shape and ``_version``, the target grid and the
    parameters' versions, so a changed map or weight is never reused) and returns the stored pair afterwards.
    For sampling, where the label map (or the label features) stays fixed over all steps: pass the *same*
    tensor object each step. Outside the context (and after it) nothing is cached. Re-entrant.

    Args:
        module: any module; its SPADE submodules (including itself) are affected.
    """
    spades = [m for m in module.modules() if isinstance(m, SPADE)]
    previous = [m._modulation_cache for m in spades]
    for m in spades:
        m._modulation_cache = {}
    try:
        yield
    finally:
        for m, prev in zip(spades, previous):
            m._modulation_cache = prev


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
        lookup, lookup_max_mb: see :class:`SPADE`.
        spade_recompute: :class:`SPADE`'s ``recompute`` (its hidden maps recomputed in the backward pass).
        checkpointing: recompute the block's activations in the backward pass instead of storing them
            (``torch.utils.checkpoint``, training with gradients only).
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
        lookup: bool = True,
        checkpointing: bool = False,
        lookup_max_mb: float | None = None,
        spade_recompute: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        spade = dict(lookup=lookup, lookup_max_mb=lookup_max_mb, recompute=spade_recompute)
        self.norm1 = SPADE(in_channels, label_nc, spade_hidden, spade_kernel, num_groups, **spade)
        self.conv1 = SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
        self.norm2 = SPADE(out_channels, label_nc, spade_hidden, spade_kernel, num_groups, **spade)
        self.conv2 = SamePadConv3d(out_channels, out_channels, 3, padding_type=padding_type)
        self.skip = (
            SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type)
            if in_channels != out_channels
            else nn.Identity()
        )

    def _forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, seg)))
        h = self.conv2(F.silu(self.norm2(h, seg)))
        return self.skip(x) + h

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, d, h, w), seg: (B, K, D, H, W) or (B, 1, D, H, W) integer -> (B, C_out, d, h, w)."""
        if self.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, seg, use_reentrant=False)
        return self._forward(x, seg)
