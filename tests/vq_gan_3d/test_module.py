"""VQGANModule without a Trainer: argument checks, latent interface, straight-through, first-stage export."""

from __future__ import annotations

import pytest
import torch

from dataset import DataError
from tests.vq_gan_3d.helpers import LABEL_NC, phantom_batch, seg_of, tiny_model
from vq_gan_3d.module import VQGANModule


@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_latent_interface_shapes(decoder: str) -> None:
    model = tiny_model(decoder=decoder).eval()
    batch = phantom_batch()
    seg = seg_of(batch) if decoder == "spade" else None
    z = model.encode(batch["image"])
    assert z.shape == (2, 4, 4, 4, 4) and not z.requires_grad
    x_hat = model.decode(z, seg)
    assert x_hat.shape == (2, 1, 16, 16, 16) and x_hat.abs().max() < 1
    assert model.latent_factor == (4, 4, 4) and model.embedding_dim == 4
    assert model.decoder_type == decoder and model.label_nc == LABEL_NC
    assert model.codebook_embeddings.shape == (32, 4)


def test_decode_rejects_seg_for_normal_and_requires_it_for_spade() -> None:
    z = torch.randn(2, 4, 4, 4, 4)
    seg = seg_of(phantom_batch())
    with pytest.raises(ValueError, match="normal decoder takes no label map"):
        tiny_model(decoder="normal").decode(z, seg)
    spade = tiny_model(decoder="spade")
    with pytest.raises(ValueError, match="needs seg"):
        spade.decode(z)
    with pytest.raises(ValueError, match="seg must be one-hot"):
        spade.decode(z, seg[:, :2])
    with pytest.raises(ValueError, match="seg must be one-hot"):
        spade.decode(z, seg[..., :8])


def test_decode_never_updates_the_codebook_even_in_training_mode() -> None:
    model = tiny_model().train()
    model(phantom_batch()["image"])  # initialises the codebook
    before = model.codebook.embeddings.clone()
    model.decode(torch.randn(2, 4, 4, 4, 4))
    assert torch.equal(model.codebook.embeddings, before)


@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_straight_through_gradient_reaches_the_encoder(decoder: str) -> None:
    model = tiny_model(decoder=decoder).train()
    batch = phantom_batch()
    x_hat, vq = model(batch["image"], seg_of(batch) if decoder == "spade" else None)
    (x_hat - batch["image"]).abs().mean().backward()
    grad = model.encoder.conv_first.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert vq.indices.shape == (2, 4, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decoder": "vqvae"}, "decoder must be"),
        ({"decoder": "spade", "label_nc": None}, "needs label_nc"),
        ({"label_nc": 0}, "label_nc"),
        ({"disc_loss_type": "wgan"}, "disc_loss_type"),
        ({"l1_weight": -1.0}, "l1_weight"),
        ({"discriminator_iter_start": -1}, "discriminator_iter_start"),
        ({"lr": 0.0}, "lr"),
        ({"betas": [0.5]}, "betas"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"slices_per_sample": 0}, "slices_per_sample"),
        ({"downsample": [4, 3, 4]}, "powers of two"),
        ({"num_groups": 3}, "divide"),
        ({"padding_type": "zeros"}, "padding_type"),
        ({"spade_hidden": 0, "decoder": "spade"}, "spade_hidden"),
    ],
    ids=[
        "decoder",
        "spade-no-label",
        "label_nc",
        "loss",
        "weight",
        "iter-start",
        "lr",
        "betas",
        "clip",
        "slices",
        "downsample",
        "groups",
        "padding",
        "spade-hidden",
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_label_out_of_range_is_a_data_error() -> None:
    batch = phantom_batch()
    batch["label"][0, 0, 0, 0, 0] = LABEL_NC
    with pytest.raises(DataError, match="outside"):
        tiny_model(decoder="spade").validation_step(batch, 0)


def test_hparams_are_primitive_lists() -> None:
    model = tiny_model(downsample=(4, 4, 4), betas=(0.5, 0.9))
    assert model.hparams.downsample == [4, 4, 4] and model.hparams.betas == [0.5, 0.9]


@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_first_stage_state_round_trip_is_bit_identical(decoder: str) -> None:
    model = tiny_model(decoder=decoder).train()
    batch = phantom_batch()
    seg = seg_of(batch) if decoder == "spade" else None
    model(batch["image"], seg)  # initialise + one EMA step, so the buffers differ from construction
    state = model.first_stage_state()
    assert not any(k.startswith(("image_discriminator", "volume_discriminator")) for k in state["state_dict"])
    assert "codebook.initialized" in state["state_dict"]

    restored = VQGANModule.from_first_stage_state(state)
    assert not hasattr(restored, "image_discriminator")
    assert not restored.training and not any(p.requires_grad for p in restored.parameters())
    restored.train()  # a frozen first stage stays in eval (no codebook updates inside stage 2)
    assert not restored.training and not restored.codebook.training
    model.eval()
    z = model.encode(batch["image"])
    assert torch.equal(restored.encode(batch["image"]), z)
    assert torch.equal(restored.decode(z, seg), model.decode(z, seg))


def test_from_first_stage_state_rejects_other_dicts() -> None:
    with pytest.raises(ValueError, match="first_stage_state"):
        VQGANModule.from_first_stage_state({"state_dict": {}})


def test_log_volumes_returns_cpu_tensors_without_codebook_update() -> None:
    model = tiny_model(decoder="spade").train()
    batch = phantom_batch()
    model(batch["image"], seg_of(batch))
    before = model.codebook.N.clone()
    out = model.log_volumes(batch)
    assert set(out) == {"input", "reconstruction", "label"}
    assert out["reconstruction"].shape == out["input"].shape == (2, 1, 16, 16, 16)
    assert out["label"].dtype == torch.int64 and out["reconstruction"].device.type == "cpu"
    assert torch.equal(model.codebook.N, before)
