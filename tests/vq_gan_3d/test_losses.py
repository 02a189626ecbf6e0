"""PatchGAN wrappers, GAN / feature-matching losses, slice sampling and PSNR: known answers and bad args."""

from __future__ import annotations

import math

import pytest
import torch

from vq_gan_3d.discriminator import PatchGAN
from vq_gan_3d.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    psnr,
    sample_slices,
)


@pytest.mark.parametrize(("dims", "shape"), [(2, (3, 1, 16, 16)), (3, (2, 1, 16, 16, 16))], ids=["2d", "3d"])
def test_patchgan_returns_logits_and_features(dims, shape) -> None:
    disc = PatchGAN(dims, in_channels=1, channels=4, num_layers=2)
    logits, feats = disc(torch.randn(*shape))
    assert logits.shape[:2] == (shape[0], 1) and logits.dim() == len(shape)
    assert len(feats) == 3  # num_layers + 1 intermediate outputs for feature matching
    assert [f.shape[1] for f in feats] == [4, 8, 16]
    assert any(isinstance(m, torch.nn.BatchNorm3d if dims == 3 else torch.nn.BatchNorm2d) for m in disc.modules())
    # batch statistics only: no rank-local running averages that could diverge under DDP
    assert not any("running" in k or "num_batches" in k for k in disc.state_dict())


@pytest.mark.parametrize(
    ("args", "match"),
    [((4, 1), "spatial_dims"), ((2, 1, 0), "channels"), ((3, 1, 8, 0), "num_layers")],
    ids=["dims", "channels", "layers"],
)
def test_patchgan_bad_arguments(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        PatchGAN(*args)


def test_hinge_and_vanilla_known_answers() -> None:
    one, zero = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert discriminator_loss(one, -one, "hinge") == 0.0  # margins satisfied
    assert discriminator_loss(zero, zero, "hinge") == 1.0
    torch.testing.assert_close(discriminator_loss(zero, zero, "vanilla"), torch.tensor(math.log(2.0)))
    assert generator_adversarial_loss(torch.full((2, 1, 2, 2), 3.0), "hinge") == -3.0
    torch.testing.assert_close(generator_adversarial_loss(zero, "vanilla"), torch.tensor(math.log(2.0)))


def test_unknown_loss_type_raises() -> None:
    with pytest.raises(ValueError, match="disc_loss_type"):
        discriminator_loss(torch.zeros(1), torch.zeros(1), "wgan")
    with pytest.raises(ValueError, match="disc_loss_type"):
        generator_adversarial_loss(torch.zeros(1), "lsgan")


def test_feature_matching_known_answer_and_stop_gradient() -> None:
    real = [torch.zeros(1, 2, 4, 4, requires_grad=True), torch.zeros(1, 4, 2, 2, requires_grad=True)]
    fake = [torch.ones(1, 2, 4, 4, requires_grad=True), torch.full((1, 4, 2, 2), 3.0, requires_grad=True)]
    loss = feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(4.0 / 2 * (1.0 + 3.0))
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None
    with pytest.raises(ValueError, match="matching"):
        feature_matching_loss(fake, real[:1])


def test_sample_slices_takes_the_same_depth_from_both_volumes() -> None:
    depth = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1).expand(3, 1, 8, 4, 4)
    a, b = sample_slices(depth, depth + 100, n_slices=2)
    assert a.shape == (6, 1, 4, 4)
    torch.testing.assert_close(b, a + 100)
    assert (a == a[:, :, :1, :1]).all()  # each picked slice is one depth index
    mid, _ = sample_slices(depth, depth, n_slices=1, random=False)
    assert (mid == 4.0).all()  # round(7 / 2)


def test_psnr_known_answer() -> None:
    x = torch.zeros(2, 1, 4, 4, 4)
    x_hat = x + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1, 1)
    expected = torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)])
    torch.testing.assert_close(psnr(x_hat, x), expected)
