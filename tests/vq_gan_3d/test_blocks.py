"""Same-padded convolutions, GroupNorm sizing, ResBlock, encoder and decoders: shapes, known answers, bad args."""

from __future__ import annotations

import pytest
import torch

from vq_gan_3d.blocks import (
    ResBlock3D,
    SamePadConv3d,
    SamePadConvTranspose3d,
    group_count,
    log2_factors,
    normalize,
)
from vq_gan_3d.decoder import Decoder3D, SPADEDecoder3D
from vq_gan_3d.encoder import Encoder3D


@pytest.mark.parametrize(
    ("kernel", "stride", "out"),
    [(3, 1, (16, 16, 16)), (4, 2, (8, 8, 8)), (4, (2, 2, 1), (8, 8, 16)), (1, 1, (16, 16, 16))],
    ids=["k3s1", "k4s2", "k4-per-axis", "k1"],
)
def test_same_pad_conv_shapes(kernel, stride, out) -> None:
    conv = SamePadConv3d(2, 3, kernel, stride)
    assert conv(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3, *out)


def test_replicate_padding_keeps_a_constant_volume_constant() -> None:
    # An averaging kernel on a constant volume gives the constant everywhere only if borders are replicated.
    conv = SamePadConv3d(1, 1, 3, bias=False)
    torch.nn.init.constant_(conv.conv.weight, 1 / 27)
    out = conv(torch.full((1, 1, 6, 6, 6), 0.5))
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    zero_pad = SamePadConv3d(1, 1, 3, bias=False, padding_type="constant")
    zero_pad.conv.weight.data.copy_(conv.conv.weight)
    assert zero_pad(torch.full((1, 1, 6, 6, 6), 0.5))[0, 0, 0, 0, 0] < 0.5


def test_transposed_conv_multiplies_by_stride() -> None:
    up = SamePadConvTranspose3d(4, 2, 4, (2, 2, 1))
    assert up(torch.randn(2, 4, 4, 5, 6)).shape == (2, 2, 8, 10, 6)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: SamePadConv3d(1, 1, 2, 3), "kernel_size"),
        (lambda: SamePadConv3d(1, 1, 3, padding_type="zeros"), "padding_type"),
        (lambda: SamePadConvTranspose3d(1, 1, (4, 4), 2), "kernel_size"),
        (lambda: normalize(24, 16), "does not divide"),
        (lambda: group_count(8, 0), "num_groups"),
        (lambda: log2_factors([4, 3, 4]), "powers of two"),
        (lambda: log2_factors([4, 4]), "powers of two"),
        (lambda: log2_factors([1, 1, 1]), "at least one axis"),
        (lambda: Encoder3D(1, 0, [4, 4, 4]), "n_hiddens"),
        (lambda: Decoder3D(1, 8, [4, 6, 4]), "powers of two"),
    ],
    ids=[
        "stride>kernel",
        "bad-padding",
        "kernel-len",
        "groups",
        "zero-groups",
        "non-pow2",
        "two-axes",
        "no-ds",
        "n_hiddens",
        "decoder-factor",
    ],
)
def test_bad_arguments_raise(factory, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_group_count_caps_at_channels() -> None:
    assert group_count(8, 32) == 8
    assert group_count(64, 32) == 32


def test_resblock_norm2_sized_for_output_channels() -> None:
    # Reference bug (norm2 built with in_channels) would make this in != out block fail.
    block = ResBlock3D(8, 16, num_groups=4)
    assert block.norm2.num_channels == 16
    assert block(torch.randn(1, 8, 4, 4, 4)).shape == (1, 16, 4, 4, 4)
    assert not any(isinstance(m, torch.nn.Dropout) for m in block.modules())


def test_published_channel_plan() -> None:
    # n_hiddens=16, [4,4,4]: encoder 1->16->32->64, decoder 64->64->32 (reference-notes 1.2/1.3).
    enc = Encoder3D(1, 16, [4, 4, 4])
    dec = Decoder3D(1, 16, [4, 4, 4])
    assert [s.down.conv.out_channels for s in enc.stages] == [32, 64] and enc.out_channels == 64
    assert [(s.up.convt.in_channels, s.up.convt.out_channels) for s in dec.stages] == [(64, 64), (64, 32)]


@pytest.mark.parametrize(
    ("factors", "latent"),
    [([4, 4, 4], (4, 4, 4)), ([2, 4, 4], (8, 4, 4)), ([1, 2, 4], (16, 8, 4))],
    ids=["444", "244", "124"],
)
def test_encoder_decoder_per_axis_factors(factors, latent) -> None:
    enc = Encoder3D(1, 4, factors, num_groups=4)
    dec = Decoder3D(1, 4, factors, num_groups=4)
    spade = SPADEDecoder3D(1, 4, factors, label_nc=3, spade_hidden=4, num_groups=4)
    h = enc(torch.randn(2, 1, 16, 16, 16))
    assert h.shape == (2, enc.out_channels, *latent)
    x_hat = dec(h)
    assert x_hat.shape == (2, 1, 16, 16, 16) and x_hat.abs().max() < 1
    seg = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 16, 16, 16)), 3).movedim(-1, 1).float()
    assert spade(h, seg).shape == (2, 1, 16, 16, 16)


def test_encoder_rejects_indivisible_input() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Encoder3D(1, 4, [4, 4, 4], num_groups=4)(torch.randn(1, 1, 16, 18, 16))


@pytest.mark.parametrize("stride", [1, 2])
def test_direct_onednn_conv_matches_pytorchs_choice_within_round_off(stride: int) -> None:
    # 8 channels at 8^3 is below PyTorch's oneDNN heuristic (slow_conv3d); the direct oneDNN call is the same
    # convolution in another summation order: outputs and gradients agree to fp32 round-off with the padded
    # input passed through the wrapped nn.Conv3d (PyTorch's own choice of backend).
    torch.manual_seed(0)
    conv = SamePadConv3d(8, 6, 4 if stride == 2 else 3, stride=stride)
    x = torch.randn(1, 8, 8, 8, 8)
    results = []
    for direct in (True, False):
        conv.zero_grad()
        xx = x.clone().requires_grad_()
        y = conv(xx) if direct else conv.conv(torch.nn.functional.pad(xx, conv.pad, mode=conv.padding_type))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xx.grad, conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()))
    for a, b in zip(*results):
        scale = float(b.abs().max())
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-6, atol=1e-6)
