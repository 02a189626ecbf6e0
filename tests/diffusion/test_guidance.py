"""Classifier-free guidance: label dropout, the null map, and u + w(c − u) with batched passes."""

from __future__ import annotations

import pytest
import torch

from dataset.contract import one_hot
from diffusion.guidance import GuidedDenoiser, combine, cond_scale_to_guidance, drop_labels
from diffusion.unet3d import Unet3D, Unet3DSPADE

TINY = {
    "dim": 8,
    "dim_mults": (1,),
    "attn_heads": 2,
    "attn_dim_head": 4,
    "label_channels": 4,
    "label_hidden": (4,),
    "spade_hidden": 8,
}


@pytest.fixture(scope="module")
def net() -> Unet3DSPADE:
    torch.manual_seed(0)
    return Unet3DSPADE(2, 3, (2, 2, 2), **TINY).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 2, 4, 4, generator=g)
    seg = one_hot(torch.randint(0, 3, (2, 1, 4, 8, 8), generator=g), 3)
    return x, torch.tensor([4, 9]), seg


@torch.no_grad()
def test_w0_is_unconditional_and_w1_conditional(net: Unet3DSPADE) -> None:
    x, t, seg = _batch()
    cond, uncond = net(x, t, seg), net(x, t, None)
    assert not torch.allclose(cond, uncond, atol=1e-6)
    torch.testing.assert_close(GuidedDenoiser(net, seg, 0.0)(x, t), uncond)
    torch.testing.assert_close(GuidedDenoiser(net, seg, 1.0)(x, t), cond)
    # w = 2.5 runs cond and uncond in one batch of 2B and must match the separate passes
    torch.testing.assert_close(
        GuidedDenoiser(net, seg, 2.5)(x, t), uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-5
    )


def test_w0_and_w1_run_a_single_pass(net: Unet3DSPADE) -> None:
    x, t, seg = _batch()
    calls: list[int] = []
    # batch of the network's output: the label-free encoder runs on the latents once, the rest on both branches
    handle = net.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    try:
        with torch.no_grad():
            for w in (0.0, 1.0, 3.0):
                GuidedDenoiser(net, seg, w)(x, t)
    finally:
        handle.remove()
    assert calls == [2, 2, 4]


def test_reference_cond_scale_maps_to_guidance_weight() -> None:
    c, u = torch.randn(3), torch.randn(3)
    s = 1.5
    w = cond_scale_to_guidance(s)
    assert w == 2.5
    torch.testing.assert_close(combine(c, u, w), c + s * (c - u))  # the reference's formula


@torch.no_grad()
def test_unconditional_denoiser_ignores_guidance() -> None:
    net = Unet3D(2, 3, (2, 2, 2), conditioning="none", **TINY).eval()
    x, t, seg = _batch()
    torch.testing.assert_close(GuidedDenoiser(net, seg, 4.0)(x, t), net(x, t))


def test_drop_labels_is_per_sample() -> None:
    seg = torch.ones(1000, 2, 1, 1, 1)
    dropped = drop_labels(seg, 0.3, torch.Generator().manual_seed(0))
    per_sample = dropped.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1).all(1)), "a sample was partly dropped"
    assert 0.25 < float((per_sample == 0).all(1).float().mean()) < 0.35
    torch.testing.assert_close(drop_labels(seg, 0.0), seg)
    assert not drop_labels(seg, 1.0).any()


def test_bad_guidance_args_raise(net: Unet3DSPADE) -> None:
    _, _, seg = _batch()
    with pytest.raises(ValueError, match="p_uncond"):
        drop_labels(seg, 1.5)
    with pytest.raises(ValueError, match="guidance"):
        GuidedDenoiser(net, seg, -1.0)
