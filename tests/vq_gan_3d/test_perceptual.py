"""LPIPS wrapper: offline weights (clear error when missing), frozen eval mode, no dropout, heads loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.vq_gan_3d.helpers import tiny_model
from vq_gan_3d.perceptual import (
    VGG16_FILENAME,
    SlicePerceptualLoss,
    _lpips_heads,
    _vgg_state_to_lpips,
    default_vgg16_path,
)


@pytest.fixture(scope="module")
def random_lpips() -> SlicePerceptualLoss:
    return SlicePerceptualLoss(random_weights=True)


def test_missing_weights_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert default_vgg16_path() == tmp_path / "hub" / "checkpoints" / VGG16_FILENAME
    with pytest.raises(FileNotFoundError, match=VGG16_FILENAME) as err:
        SlicePerceptualLoss()
    assert str(default_vgg16_path()) in str(err.value) and "IMAGENET1K_V1" in str(err.value)


def test_module_fails_at_fit_start_without_weights(tmp_path: Path) -> None:
    model = tiny_model(perceptual_weight=4.0, vgg_weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=VGG16_FILENAME):
        model.on_fit_start()


def test_stays_frozen_in_eval_without_dropout(random_lpips: SlicePerceptualLoss) -> None:
    random_lpips.train()
    assert not random_lpips.training and not random_lpips.net.training
    assert not any(p.requires_grad for p in random_lpips.parameters())
    assert not any(isinstance(m, torch.nn.Dropout) for m in random_lpips.modules())


def test_calibrated_heads_are_loaded(random_lpips: SlicePerceptualLoss) -> None:
    state = random_lpips.net.state_dict()
    for key, value in _lpips_heads().items():
        assert torch.equal(state[key], value), key


def test_distance_is_zero_for_identical_slices_and_differentiable(random_lpips: SlicePerceptualLoss) -> None:
    a = torch.rand(3, 1, 16, 16) * 2 - 1
    b = (torch.rand(3, 1, 16, 16) * 2 - 1).requires_grad_(True)
    assert torch.allclose(random_lpips(a, a), torch.zeros(3), atol=1e-6)
    d = random_lpips(a, b)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_loads_backbone_from_a_torchvision_state_dict(tmp_path: Path, random_lpips: SlicePerceptualLoss) -> None:
    # A torchvision-style vgg16 file (features.{i}.* keys) made from a random backbone; loading must reproduce it.
    backbone = {k: v for k, v in random_lpips.net.state_dict().items() if k.startswith("net.")}
    vgg_file = tmp_path / VGG16_FILENAME
    torch.save({"features." + k.split(".", 2)[2]: v for k, v in backbone.items()}, vgg_file)  # net.sliceK.i.w
    assert len(_vgg_state_to_lpips(torch.load(vgg_file, weights_only=True))) == 26
    loaded = SlicePerceptualLoss(vgg_weights_path=str(vgg_file))
    for key, value in backbone.items():
        assert torch.equal(loaded.net.state_dict()[key], value), key


def test_module_keeps_lpips_in_eval_and_out_of_the_state_dict() -> None:
    model = tiny_model(perceptual_weight=1.0, perceptual_random_weights=True)
    model.on_fit_start()
    model.train()
    net = model.perceptual_net()
    assert not net.training
    assert not any(k.startswith(("_perceptual", "perceptual")) for k in model.state_dict())
    trained = {id(p) for p in model.parameters()}
    assert not any(id(p) in trained for p in net.parameters())
