"""Label latent diffusion: attributes with known answers, dropout, guidance, partial sampling, --like."""

from __future__ import annotations

import math

import pytest
import torch

from dataset.contract import one_hot
from diffusion.label_diffusion import (
    AttributeEmbedding,
    LabelLatentDiffusion,
    attribute_names,
    first_timestep,
    label_attributes,
    voxel_volume_ml,
)
from diffusion.schedulers import NoiseSchedule
from tests.vq_gan_3d.helpers import LABEL_NAMES as NAMES
from tests.vq_gan_3d.helpers import label_phantoms as phantoms
from tests.vq_gan_3d.helpers import tiny_label_ae as tiny_ae
from vq_gan_3d.label_autoencoder import architecture_hparams

TINY_UNET = {"dim": 8, "dim_mults": [1, 2], "attn_heads": 1, "attn_dim_head": 8, "resnet_groups": 4,
             "init_kernel_size": 3}  # fmt: skip


def test_label_attributes_known_answer() -> None:
    label = torch.zeros(1, 1, 4, 6, 8, dtype=torch.long)
    label[0, 0, :2, :3, :4] = 1  # 24 voxels in the (-, -, -) corner
    label[0, 0, 2:, 3:, 4:] = 2  # 24 voxels in the (+, +, +) corner
    affine = torch.diag(torch.tensor([2.0, 0.5, 1.0, 1.0], dtype=torch.float64))  # 1 mm^3 = 0.001 mL per voxel
    assert math.isclose(float(voxel_volume_ml(affine)), 0.001)
    attrs = label_attributes(label, voxel_volume_ml(affine)[None], 3, centroid_idx=[1, 2])
    assert attribute_names(["bg", "a", "b"], ["a", "b"]) == [
        "a", "b", "a.centroid_d", "a.centroid_h", "a.centroid_w", "b.centroid_d", "b.centroid_h", "b.centroid_w"
    ]  # fmt: skip
    assert torch.allclose(attrs[0, :2], torch.tensor([0.024, 0.024], dtype=torch.float64))
    # class 1: D indices {0, 1} on linspace(-1, 1, 4) -> mean -2/3; H {0,1,2} of 6 -> -0.6; W {0..3} of 8 -> -4/7
    expected = torch.tensor([-2 / 3, -0.6, -4 / 7], dtype=torch.float64)
    assert torch.allclose(attrs[0, 2:5], expected) and torch.allclose(attrs[0, 5:8], -expected)


def make_diffusion(**kwargs: object) -> LabelLatentDiffusion:
    ae = tiny_ae()
    model = LabelLatentDiffusion(
        4, NAMES, label_ae_hparams=architecture_hparams(ae), block_size=(16, 16, 16), denoiser_kwargs=TINY_UNET,
        sample_steps=4, **kwargs,
    )  # fmt: skip
    model.label_ae.load_state_dict(ae.state_dict())
    return model.eval()


def fit_stats(model: LabelLatentDiffusion) -> None:
    batch = phantoms(4)
    with torch.no_grad():
        model.latent_norm.fit_std([model.label_ae.encode(one_hot(batch["label"], 4))])
        a = model.attributes_of(batch["label"], batch["affine"])
    model.attr_mean.copy_(a.mean(0))
    model.attr_std.copy_(a.std(0).clamp(min=1e-3))
    model.voxel_size_dhw.copy_(torch.tensor([2.0, 1.5, 1.5]))
    model.attr_fitted.fill_(True)


def test_attribute_embedding_null_and_independent_dropout() -> None:
    emb = AttributeEmbedding(3, 16)
    v = torch.randn(2, 3)
    given, none = emb(v, torch.ones(2, 3)), emb(v, torch.zeros(2, 3))
    assert not torch.allclose(given, none)
    # a dropped attribute's value has no influence at all
    mask = torch.tensor([[1.0, 0.0, 1.0]] * 2)
    v2 = v.clone()
    v2[:, 1] += 100.0
    assert torch.equal(emb(v, mask), emb(v2, mask))
    model = make_diffusion(p_drop_attribute=0.3, p_uncond=0.1)
    m = model.drop_mask(20000, 3, torch.Generator().manual_seed(0))
    # kept with (1 - 0.3) * (1 - 0.1) = 0.63; attributes dropped independently (not all together)
    assert abs(float(m.mean()) - 0.63) < 0.01
    assert abs(float((m.sum(1) == 0).float().mean()) - (0.1 + 0.9 * 0.3**3)) < 0.01


def test_condition_names_are_checked() -> None:
    model = make_diffusion(centroid_classes=["inner"])
    values, mask = model.condition({"outer": 300.0, "inner.centroid_d": 0.2})
    assert mask.tolist() == [[1, 0, 0, 1, 0, 0]]
    assert values[0, 0] == 300.0 and values[0, 3] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown attribute 'ventricles'"):
        model.condition({"ventricles": 1.0})
    with pytest.raises(ValueError, match="centroid_classes"):
        make_diffusion(centroid_classes=["nope"])


@pytest.mark.parametrize("objective,sampler", [("rflow", "rflow"), ("ddpm", "ddim")])
def test_sampling_is_seeded_guided_and_like_stays_close(objective: str, sampler: str) -> None:
    kwargs = {"objective": objective, "sampler": sampler}
    if objective == "ddpm":
        kwargs |= {"prediction_type": "epsilon", "num_train_timesteps": 100}
    model = make_diffusion(**kwargs)
    fit_stats(model)
    values, mask = model.condition({"outer": 500.0})

    def draw(seed: int, **kw: object) -> torch.Tensor:
        return model.sample_latents(values, mask, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    assert not torch.equal(draw(0, guidance=1.0), draw(0, guidance=3.0))  # the guided branch really runs
    labels = model.sample_labels(values, mask, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (1, 1, 16, 16, 16) and labels.dtype == torch.int64
    # --like: a small strength starts close to the source latent, so the result is much closer to it than a sample
    like = phantoms(1)["label"]
    source = model.label_ae.encode(one_hot(like, 4))
    near = draw(0, like=like, strength=0.3)
    far = draw(0, like=like, strength=1.0)
    assert (near - source).abs().mean() < 0.5 * (far - source).abs().mean()


def test_partial_sampling_runs_only_the_steps_below_start_t() -> None:
    sched = NoiseSchedule("rflow", 1000, prediction_type="v_prediction")
    x = torch.randn(1, 2, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return -z * 0.5

    full = sched.sample(denoise, x, "rflow", 5)
    all_steps, seen[:] = list(seen), []
    start = first_timestep(sched, "rflow", 5, 8, 0.5)
    assert torch.equal(sched.sample(denoise, x, "rflow", 5, start_t=all_steps[0]), full)  # start at T: the full loop
    seen.clear()
    sched.sample(denoise, x, "rflow", 5, start_t=start)
    assert seen == [t for t in all_steps if t <= start] and 0 < len(seen) < len(all_steps)
    assert start <= 500
    with pytest.raises(ValueError, match="strength"):
        first_timestep(sched, "rflow", 5, 8, 0.0)


def test_statistics_are_required_before_sampling() -> None:
    model = make_diffusion()
    values, mask = model.condition({})
    with pytest.raises(RuntimeError, match="statistics"):
        model.sample_latents(values, mask)


def test_training_attributes_are_measured_on_the_augmented_maps() -> None:
    """The condition describes the map the model learns: attributes of the deformed map, not of the stored one."""
    batch = phantoms(2)
    plain = make_diffusion()
    label, raw = plain.training_inputs(batch)
    assert torch.equal(label, batch["label"])
    assert torch.equal(raw, plain.attributes_of(batch["label"], batch["affine"]))
    augment = {"p": 1.0, "degrees": 10.0, "scales": 0.1, "translation_mm": 3.0, "seed": 2}
    model = make_diffusion(label_augment=augment)
    assert model.hparams.label_augment["scales"] == 0.1  # stored as plain data with the defaults filled in
    label, raw = model.training_inputs(batch)
    assert not torch.equal(label, batch["label"])
    assert torch.equal(raw, model.attributes_of(label, batch["affine"]))
    assert not torch.allclose(raw, plain.attributes_of(batch["label"], batch["affine"]))
