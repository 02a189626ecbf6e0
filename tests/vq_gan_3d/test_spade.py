"""SPADE block: known answers for the modulation, label dependence, argument checks."""

from __future__ import annotations

import pytest
import torch

from vq_gan_3d.spade import SPADE, SPADEGroupNorm3D, SPADEResBlock3D, modulation_cache


def _seg(b: int, k: int, size: tuple[int, int, int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.randint(0, k, (b, *size)), k).movedim(-1, 1).float()


def test_zero_modulation_is_plain_group_norm() -> None:
    spade = SPADE(8, 3, hidden=4, num_groups=2)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.weight)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.bias)
    x = torch.randn(2, 8, 4, 4, 4)
    expected = torch.nn.functional.group_norm(x, 2, eps=1e-5)
    torch.testing.assert_close(spade(x, _seg(2, 3, (16, 16, 16))), expected)


def test_known_scale_and_shift() -> None:
    # gamma = 1 and beta = 2 everywhere (bias only) -> out = norm(x) * 2 + 2.
    spade = SPADE(4, 2, hidden=3, num_groups=4)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.weight)
    with torch.no_grad():
        spade.mlp_gamma_beta.bias.copy_(torch.tensor([1.0] * 4 + [2.0] * 4))  # gamma channels first, then beta
    x = torch.randn(1, 4, 2, 4, 4)
    out = spade(x, _seg(1, 2, (2, 4, 4)))
    torch.testing.assert_close(out, torch.nn.functional.group_norm(x, 4, eps=1e-5) * 2 + 2)


def test_output_depends_on_label() -> None:
    spade = SPADE(4, 3, hidden=4, num_groups=2)
    x = torch.randn(1, 4, 2, 4, 4)
    seg_a = torch.zeros(1, 3, 8, 16, 16)
    seg_a[:, 0] = 1
    seg_b = seg_a.clone()
    seg_b[:, :, :, :8] = 0
    seg_b[:, 1, :, :8] = 1  # top half of every slice changes class
    assert not torch.allclose(spade(x, seg_a), spade(x, seg_b))
    assert spade.mlp_shared[0].kernel_size == (1, 3, 3)  # in-plane only, as the reference
    assert SPADEGroupNorm3D is SPADE


def test_label_map_is_resized_nearest() -> None:
    # 2x downsizing by nearest reads the even voxels only, so changing every odd voxel changes nothing
    # (trilinear or area resizing would see the change).
    spade = SPADE(4, 2, hidden=4, num_groups=2)
    x = torch.randn(1, 4, 2, 4, 4)
    seg_a = _seg(1, 2, (4, 8, 8))
    seg_b = seg_a.clone()
    seg_b[:, :, 1::2] = 1 - seg_b[:, :, 1::2]
    seg_b[:, :, :, 1::2] = 1 - seg_a[:, :, :, 1::2]
    torch.testing.assert_close(spade(x, seg_a), spade(x, seg_b))
    seg_c = seg_a.clone()
    seg_c[:, :, 0::2, 0::2, 0::2] = 1 - seg_c[:, :, 0::2, 0::2, 0::2]
    assert not torch.allclose(spade(x, seg_a), spade(x, seg_c))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": (1, 2, 3)}, "odd"),
        ({"kernel": (3, 3)}, "odd"),
        ({"hidden": 0}, "hidden"),
        ({"num_groups": 3}, "divide"),
    ],
    ids=["even-kernel", "kernel-len", "hidden", "groups"],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SPADE(8, 3, **kwargs)


def test_wrong_label_channels_raise() -> None:
    with pytest.raises(ValueError, match="label_nc=3"):
        SPADE(8, 3, hidden=4)(torch.randn(1, 8, 2, 2, 2), _seg(1, 4, (4, 4, 4)))


def test_spade_resblock_shapes() -> None:
    block = SPADEResBlock3D(4, 8, label_nc=3, spade_hidden=4, num_groups=4)
    assert block(torch.randn(2, 4, 4, 4, 4), _seg(2, 3, (16, 16, 16))).shape == (2, 8, 4, 4, 4)


# ---------------------------------------------------------------- modulation cache (sampling)
def _counting(spade: SPADE) -> list[int]:
    """Count hidden-map computations of ``spade`` (each is one full modulation computation)."""
    calls = [0]
    original = spade.hidden_map

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    spade.hidden_map = counted  # type: ignore[method-assign]
    return calls


def test_modulation_cache_is_bit_identical_and_computes_once() -> None:
    torch.manual_seed(0)
    block = SPADEResBlock3D(4, 8, label_nc=3, spade_hidden=6, num_groups=2).eval()
    calls = [_counting(block.norm1), _counting(block.norm2)]
    seg = _seg(2, 3, (8, 8, 8))
    xs = [torch.randn(2, 4, 4, 4, 4) for _ in range(3)]
    with torch.no_grad():
        plain = [block(x, seg) for x in xs]
        assert [c[0] for c in calls] == [3, 3]
        with modulation_cache(block):
            cached = [block(x, seg) for x in xs]
        assert [c[0] for c in calls] == [4, 4]  # one computation per SPADE for the three calls
        for p, c in zip(plain, cached):
            assert torch.equal(p, c)
        # Outside the context nothing is cached.
        block(xs[0], seg)
        assert [c[0] for c in calls] == [5, 5]
        assert block.norm1._modulation_cache is None


def test_modulation_cache_recomputes_for_a_different_or_edited_seg() -> None:
    torch.manual_seed(1)
    spade = SPADE(4, 3, hidden=5, num_groups=2).eval()
    calls = _counting(spade)
    x = torch.randn(1, 4, 4, 4, 4)
    seg_a, seg_b = _seg(1, 3, (4, 4, 4)), _seg(1, 3, (4, 4, 4))
    with torch.no_grad(), modulation_cache(spade):
        out_a = spade(x, seg_a)
        out_b = spade(x, seg_b)  # another tensor: recomputed
        assert calls[0] == 2
        assert torch.equal(out_b, SPADE.forward(spade, x, seg_b.clone()))
        assert calls[0] == 3
        seg_a[:, :, :2] = seg_b[:, :, :2]  # in-place edit bumps _version: recomputed, not served stale
        edited = spade(x, seg_a)
        assert calls[0] == 4
        assert not torch.equal(edited, out_a)
        spade(x[:, :, :2], seg_a)  # another grid: recomputed
        assert calls[0] == 5
    with torch.no_grad():
        assert torch.equal(edited, spade(x, seg_a))


def test_modulation_cache_covers_integer_labels_and_nested_modules() -> None:
    torch.manual_seed(2)
    model = torch.nn.ModuleList([SPADE(4, 3, hidden=5, num_groups=2), SPADE(4, 3, hidden=5, num_groups=2)]).eval()
    labels = torch.randint(0, 3, (1, 1, 4, 8, 8))
    x = torch.randn(1, 4, 4, 8, 8)
    with torch.no_grad():
        plain = [m(x, labels) for m in model]
        with modulation_cache(model):
            with modulation_cache(model[0]):  # re-entrant: the inner exit restores the outer cache
                pass
            assert model[0]._modulation_cache == {}
            again = [m(x, labels) for m in model for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip([plain[0], plain[0], plain[1], plain[1]], again))
    assert model[0]._modulation_cache is None
