"""SPADE block: known answers for the modulation, label dependence, argument checks."""

from __future__ import annotations

import pytest
import torch

from vq_gan_3d.spade import SPADE, SPADEGroupNorm3D, SPADEResBlock3D


def _seg(b: int, k: int, size: tuple[int, int, int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.randint(0, k, (b, *size)), k).movedim(-1, 1).float()


def test_zero_modulation_is_plain_group_norm() -> None:
    spade = SPADE(8, 3, hidden=4, num_groups=2)
    for conv in (spade.mlp_gamma, spade.mlp_beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(2, 8, 4, 4, 4)
    expected = torch.nn.functional.group_norm(x, 2, eps=1e-5)
    torch.testing.assert_close(spade(x, _seg(2, 3, (16, 16, 16))), expected)


def test_known_scale_and_shift() -> None:
    # gamma = 1 and beta = 2 everywhere (bias only) -> out = norm(x) * 2 + 2.
    spade = SPADE(4, 2, hidden=3, num_groups=4)
    torch.nn.init.zeros_(spade.mlp_gamma.weight)
    torch.nn.init.constant_(spade.mlp_gamma.bias, 1.0)
    torch.nn.init.zeros_(spade.mlp_beta.weight)
    torch.nn.init.constant_(spade.mlp_beta.bias, 2.0)
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
