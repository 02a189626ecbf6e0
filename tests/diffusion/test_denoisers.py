"""Denoiser variants: shape contract, conditioning, architecture facts of Unet3D_SPADE, bad arguments."""

from __future__ import annotations

import pytest
import torch

from dataset.contract import one_hot
from diffusion.attention import RelativePositionBias, RotaryEmbedding
from diffusion.denoiser_factory import build_denoiser
from diffusion.unet3d import Unet3D, Unet3DSPADE, coordinate_grid

TINY = {"dim": 8, "dim_mults": (1, 2), "attn_heads": 2, "attn_dim_head": 4, "label_channels": 4, "label_hidden": (4,)}
VARIANTS = {
    "unet3d_spade": {**TINY, "spade_hidden": 8},
    "unet3d-concat": {**TINY, "conditioning": "concat"},
    "unet3d-pool-concat": {**TINY, "conditioning": "concat", "label_encoder": "pool"},
    "unet3d-none": {**TINY, "conditioning": "none"},
    "monai_spade": {
        "dim": 8,
        "dim_mults": (1, 2),
        "attn_dim_head": 8,
        "label_channels": 4,
        "label_hidden": (4,),
        "spade_hidden": 8,
    },
}


def _build(variant: str, factor: tuple[int, int, int] = (2, 2, 2)) -> torch.nn.Module:
    name = variant.split("-")[0]
    net = build_denoiser(name, 3, 3, factor, VARIANTS[variant]).eval()
    with torch.no_grad():  # MONAI zero-initialises output convs (the output ignores everything): randomise them
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.1)
    return net


def _inputs(factor: tuple[int, int, int] = (2, 2, 2), latent: tuple[int, int, int] = (4, 4, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *latent, generator=g)
    label = torch.randint(0, 3, (2, 1, *(s * f for s, f in zip(latent, factor))), generator=g)
    return x, torch.tensor([3, 17]), one_hot(label, 3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shape_contract(variant: str) -> None:
    net = _build(variant)
    x, t, seg = _inputs()
    with torch.no_grad():
        out = net(x, t, seg)
        null = net(x, t)  # cond=None: the null map
    assert out.shape == x.shape and null.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_label_map_matters_exactly_when_conditional(variant: str) -> None:
    net = _build(variant)
    x, t, seg = _inputs()
    _, _, other = _inputs(seed=1)
    with torch.no_grad():
        a, b = net(x, t, seg), net(x, t, other)
    if variant.endswith("none"):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert not torch.allclose(a, b, atol=1e-6)


def test_precomputed_label_features_equal_passing_the_map() -> None:
    net = _build("unet3d_spade")
    x, t, seg = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, seg), net(x, t, label_features=net.encode_labels(seg)))


def test_anisotropic_latent_factor_and_non_square_latent() -> None:
    net = _build("unet3d_spade", factor=(1, 4, 4))
    x, t, seg = _inputs(factor=(1, 4, 4), latent=(3, 4, 6))
    with torch.no_grad():
        assert net(x, t, seg).shape == (2, 3, 3, 4, 6)


def test_unet3d_spade_architecture_facts() -> None:
    """Reference-notes §2.1: pseudo-3D convs, in-plane resampling, SPADE decoder, time-aware middle blocks."""
    net = Unet3DSPADE(8, 37, (4, 4, 4))  # paper configuration
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)]
    assert all(c.kernel_size[0] == 1 and c.stride[0] == 1 for c in convs), "a conv mixes or resamples depth"
    assert net.init_conv.kernel_size == (1, 7, 7) and net.init_conv.out_channels == 64
    assert [blk[0].norm1.__class__.__name__ for blk in net.downs] == ["GroupNorm"] * 4
    assert all(blk[0].spade for blk in net.ups) and net.mid_block1.spade and net.mid_block2.spade
    # the reference's mid blocks ignored time (reference-notes §6 item 31)
    assert net.mid_block1.time_mlp is not None and net.mid_block2.time_mlp is not None
    assert [blk[0].conv2.out_channels for blk in net.downs] == [64, 128, 256, 512]
    assert net.label_encoder.out_channels == 64
    x = torch.randn(1, 8, 2, 8, 8)
    with torch.no_grad():
        assert net(x, torch.tensor([7]), torch.zeros(1, 37, 8, 32, 32)).shape == x.shape


def test_coordinate_grid_known_values() -> None:
    grid = coordinate_grid((3, 2, 5), torch.device("cpu"), torch.float32)
    assert grid.shape == (3, 3, 2, 5)
    assert torch.equal(grid[0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(grid[1, 0, :, 0], torch.tensor([-1.0, 1.0]))
    assert torch.equal(grid[2, 0, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(grid[0, 1], torch.zeros(2, 5))  # depth coordinate constant within a slice


@pytest.mark.parametrize("position_input", [False, True])
def test_only_position_input_tells_the_unet_where_along_depth_it_is(position_input: bool) -> None:
    """Convolutions are in-plane and depth attention sees relative positions only, so without coordinates an input
    that is the same in every slice gives the same output in every slice: the network cannot know where along depth
    a slice lies (the label generator's wrapped and doubled anatomy, issue 25). Coordinates break the symmetry."""
    torch.manual_seed(0)
    net = Unet3D(3, 1, (4, 4, 4), conditioning="none", position_input=position_input, **TINY).eval()
    x = torch.randn(1, 3, 1, 4, 4).expand(1, 3, 6, 4, 4).contiguous()  # every depth slice identical
    with torch.no_grad():
        out = net(x, torch.tensor([0.5]), None)
    spread = (out - out[:, :, :1]).abs().max().item()
    if position_input:
        assert spread > 1e-3
    else:
        assert spread < 1e-5


def test_relative_position_bias_buckets() -> None:
    rpb = RelativePositionBias(heads=2, num_buckets=32, max_distance=32)
    rel = torch.arange(-40, 41)
    b = rpb.bucket(rel)
    assert b.min() >= 0 and b.max() < 32
    # small distances get their own bucket per direction; far ones saturate
    assert len(set(b[(rel.abs() < 8)].tolist())) == 15
    assert b[rel == 40].item() == b[rel == 33].item()
    assert rpb(5, torch.device("cpu")).shape == (2, 5, 5)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    rot = RotaryEmbedding(8)
    q, k = torch.randn(8), torch.randn(8)
    seq_q, seq_k = q.expand(6, 8), k.expand(6, 8)
    scores = rot(seq_q) @ rot(seq_k).T  # (6, 6): query position i, key position j
    for shift in range(-5, 6):
        diag = torch.diagonal(scores, offset=shift)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rot(seq_q).norm(dim=-1), seq_q.norm(dim=-1))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("unet3d_spade", {"conditioning": "concat"}, "always uses"),
        ("unet3d", {"conditioning": "film"}, "conditioning"),
        ("unet3d", {"init_kernel_size": 4}, "odd"),
        ("unet3d", {"dim": 12, "resnet_groups": 8}, "divisible"),
        ("unet3d", {"dim_mults": []}, "positive"),
        ("unet3d", {"attn_heads": 0}, "attn_heads"),
        ("unet3d", {"typo_dim": 3}, "typo_dim"),
        ("monai_spade", {"dim": 8, "attention_levels": [True]}, "attention_levels"),
        ("transformer", {}, "denoiser must be one of"),
    ],
    ids=["spade-cond", "cond", "kernel", "groups", "mults", "heads", "typo", "monai-attn", "name"],
)
def test_invalid_args_raise(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_denoiser(name, 3, 3, (2, 2, 2), kwargs)


def test_bad_inputs_raise() -> None:
    net = Unet3D(3, 3, (2, 2, 2), **TINY)
    x, t, seg = _inputs()
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(2, 3, 4, 3, 4), t)
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 5, 4, 4, 4), t)
    with pytest.raises(ValueError, match="t must be"):
        net(x, torch.tensor([1]))
    with pytest.raises(ValueError, match="do not match"):
        net(x, t, one_hot(torch.zeros(2, 1, 8, 4, 4, dtype=torch.long), 3))
