"""The label encoder is aligned with the VQ-GAN latent grid (the reference's SegConv3D was not)."""

from __future__ import annotations

import pytest
import torch

from dataset.contract import one_hot
from diffusion.label_encoder import LabelEncoder


def _seg(k: int, size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return one_hot(torch.randint(0, k, (1, 1, *size), generator=g), k)


@pytest.mark.parametrize(
    ("factor", "mode"),
    [((4, 4, 4), "conv"), ((2, 4, 4), "conv"), ((1, 2, 2), "conv"), ((4, 4, 4), "pool")],
    ids=["conv-444", "conv-244", "conv-122", "pool-444"],
)
def test_output_lies_on_the_latent_grid(factor: tuple[int, int, int], mode: str) -> None:
    enc = LabelEncoder(3, factor, mode, out_channels=5, hidden=(4, 6))
    out = enc(_seg(3, (8, 16, 16)))
    c = 3 if mode == "pool" else 5
    assert out.shape == (1, c, 8 // factor[0], 16 // factor[1], 16 // factor[2])
    assert enc.out_channels == c


@pytest.mark.parametrize("mode", ["conv", "pool"])
@pytest.mark.parametrize("fd", [2, 4])
def test_depth_block_i_changes_latent_slice_i_only(mode: str, fd: int) -> None:
    """Relabelling image slices fd·i … fd·i+fd−1 may change latent slice i of the features, and no other."""
    torch.manual_seed(0)
    enc = LabelEncoder(3, (fd, 2, 2), mode, out_channels=4, hidden=(4,))
    seg = _seg(3, (4 * fd, 8, 8))
    base = enc(seg)
    for i in range(4):
        for edge in (fd * i, fd * i + fd - 1):  # first and last slice of block i
            changed = seg.clone()
            changed[:, :, edge] = seg[:, :, edge].roll(1, dims=1)  # another class at every voxel of that slice
            diff = (enc(changed) - base).abs().amax(dim=(0, 1, 3, 4))  # per latent slice
            assert diff[i] > 0, f"latent slice {i} ignores image slice {edge}"
            others = torch.cat((diff[:i], diff[i + 1 :]))
            assert torch.all(others == 0), f"image slice {edge} leaked into latent slices {others.nonzero().flatten()}"


def test_pool_mode_gives_class_fractions() -> None:
    label = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    label[..., 0, 0, 0] = 1  # one voxel of class 1 in the 2×2×2 block
    out = LabelEncoder(2, (2, 2, 2), "pool")(one_hot(label, 2))
    torch.testing.assert_close(out.flatten(), torch.tensor([7 / 8, 1 / 8]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latent_factor": (3, 4, 4)}, "powers of two"),
        ({"latent_factor": (4, 4)}, "powers of two"),
        ({"mode": "vqvae"}, "mode"),
        ({"label_nc": 0}, "label_nc"),
        ({"hidden": ()}, "positive"),
    ],
    ids=["factor-3", "factor-len", "mode", "label_nc", "hidden"],
)
def test_invalid_args_raise(kwargs: dict, match: str) -> None:
    args = {"label_nc": 3, "latent_factor": (4, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=match):
        LabelEncoder(**args)


def test_bad_label_maps_raise() -> None:
    enc = LabelEncoder(3, (4, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.zeros(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="must be"):
        enc(torch.zeros(1, 2, 8, 16, 16))
