"""The stage-2 option ``inpaint_inputs`` (diffusion/inpaint_inputs.py): the denoiser also takes the masked real
latent and the region mask. Tiny sizes: latent 4 channels, (4, 8, 8) for an 8x16x16 image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion.inpaint_inputs import (
    REGION_FRACTION,
    inpaint_context,
    plain_context,
    random_region_mask,
    random_region_masks,
)
from tests.diffusion.helpers import LABEL_NC, TinyVolumes, save_tiny_vqgan

DENOISER = {"dim": 8, "dim_mults": [1, 2], "attn_heads": 2, "attn_dim_head": 8, "label_channels": 4,
            "label_hidden": [4], "spade_hidden": 8}  # fmt: skip


def tiny_module(tmp_path: Path, inpaint_inputs: bool, **kwargs: object):  # noqa: ANN201
    from diffusion.module import LatentDiffusionModule

    torch.manual_seed(0)
    return LatentDiffusionModule(
        label_nc=LABEL_NC,
        first_stage_ckpt=str(save_tiny_vqgan(tmp_path / "vq.ckpt", decoder="spade")),
        block_size=(8, 16, 16),
        num_train_timesteps=50,
        sample_steps=3,
        inpaint_inputs=inpaint_inputs,
        **{"denoiser_kwargs": DENOISER, **kwargs},
    )


def test_the_option_adds_latent_plus_one_input_channels_and_nothing_else(tmp_path: Path) -> None:
    plain, trained = tiny_module(tmp_path, False), tiny_module(tmp_path, True)
    c = plain.first_stage.embedding_dim
    assert plain.denoiser.in_channels == c and plain.denoiser.init_conv.in_channels == c
    assert trained.denoiser.in_channels == 2 * c + 1 and trained.denoiser.init_conv.in_channels == 2 * c + 1
    assert trained.ema.module.in_channels == 2 * c + 1
    assert trained.hparams.inpaint_inputs is True and plain.hparams.inpaint_inputs is False
    # the same parameters apart from the init conv's input width: the option changes nothing else
    ps, ts = plain.state_dict(), trained.state_dict()
    assert set(ps) == set(ts)
    assert sorted(k for k in ps if ps[k].shape != ts[k].shape) == [
        "denoiser.init_conv.weight", "ema.averaged.module.init_conv.weight"]  # fmt: skip
    with pytest.raises(ValueError, match="extra_channels"):
        tiny_module(tmp_path, True, denoiser_kwargs={**DENOISER, "extra_channels": 3})
    with pytest.raises(ValueError, match="inpaint_mask_p"):
        tiny_module(tmp_path, True, inpaint_mask_p=1.5)


def test_the_monai_denoiser_takes_the_extra_channels_too() -> None:
    from diffusion.denoiser_factory import build_denoiser

    net = build_denoiser("monai_spade", 4, LABEL_NC, (2, 2, 2), {"dim": 8, "dim_mults": [1, 2], "attn_dim_head": 8,
                         "resnet_groups": 4, "label_channels": 4, "label_hidden": [4]}, extra_channels=5)  # fmt: skip
    out = net(torch.randn(1, 9, 4, 8, 8), torch.tensor([3]))
    assert out.shape == (1, 4, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, 9, d, h, w\)"):
        net(torch.randn(1, 4, 4, 8, 8), torch.tensor([3]))


def test_context_is_the_masked_latent_then_the_mask() -> None:
    z0 = torch.randn(2, 4, 3, 4, 5)
    m = torch.zeros(3, 4, 5, dtype=torch.bool)
    m[1:, :2] = True
    ctx = inpaint_context(z0, m)
    assert ctx.shape == (2, 5, 3, 4, 5)
    torch.testing.assert_close(ctx[:, 4], m.float().expand(2, -1, -1, -1))
    torch.testing.assert_close(ctx[:, :4][:, :, ~m], z0[:, :, ~m])
    assert (ctx[:, :4][:, :, m] == 0).all()
    plain = plain_context(2, 4, (3, 4, 5), "cpu")
    torch.testing.assert_close(plain, inpaint_context(z0, torch.ones(3, 4, 5)))
    with pytest.raises(ValueError, match="does not fit"):
        inpaint_context(z0, torch.ones(3, 4, 4))


def test_random_regions_are_reproducible_from_the_seed_and_within_bounds() -> None:
    shape = (8, 12, 16)
    n = 8 * 12 * 16
    masks = [random_region_mask(shape, torch.Generator().manual_seed(s)) for s in range(40)]
    again = [random_region_mask(shape, torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    assert len({m.numpy().tobytes() for m in masks}) == 40  # different seeds, different regions
    lo, hi = REGION_FRACTION
    fractions = [float(m.sum()) / n for m in masks]
    # rounding to voxels and clipping at the grid's faces move the fraction a little off the target
    assert all(m.dtype == torch.bool and m.shape == shape and m.any() for m in masks)
    assert min(fractions) >= 0.5 * lo and max(fractions) <= 1.25 * hi
    assert max(fractions) > 0.3 and min(fractions) < 0.1  # the range is used, not one size
    # one connected blob (box or ellipsoid): its bounding box is filled at least as an ellipsoid fills its box
    for m in masks:
        idx = m.nonzero()
        box = (idx.max(0).values - idx.min(0).values + 1).prod().item()
        assert m.sum().item() >= 0.4 * box
    tiny = random_region_mask((1, 1, 2), torch.Generator().manual_seed(0))
    assert tiny.any()
    with pytest.raises(ValueError, match="fraction"):
        random_region_mask(shape, fraction=(0.0, 0.5))


def test_training_masks_follow_p_and_the_seed() -> None:
    ones = random_region_masks(3, (4, 8, 8), 0.0, torch.Generator().manual_seed(0))
    assert ones.shape == (3, 1, 4, 8, 8) and bool((ones == 1).all())
    regions = random_region_masks(3, (4, 8, 8), 1.0, torch.Generator().manual_seed(0))
    assert all(0 < regions[i].sum() < regions[i].numel() for i in range(3))
    assert set(regions.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(regions, random_region_masks(3, (4, 8, 8), 1.0, torch.Generator().manual_seed(0)))
    # the global RNG (the training RNG): the same seed gives the same masks
    torch.manual_seed(5)
    a = random_region_masks(16, (4, 8, 8), 0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(a, random_region_masks(16, (4, 8, 8), 0.5))
    whole = [bool((a[i] == 1).all()) for i in range(16)]
    assert 0 < sum(whole) < 16  # both kinds at p = 0.5
    with pytest.raises(ValueError, match="p must be"):
        random_region_masks(1, (4, 8, 8), 1.5)


def test_a_tiny_model_with_the_option_learns(tmp_path: Path) -> None:
    """Overfit two volumes with random regions: the loss on fixed noise, timesteps and masks falls."""
    model = tiny_module(tmp_path, True, inpaint_mask_p=0.5, prediction_type="sample")
    batch = next(iter(torch.utils.data.DataLoader(TinyVolumes(2), batch_size=2)))
    model.latent_norm.fit_std(iter([model.first_stage.encode(batch["image"]).float()]))
    z0, seg = model.encode(batch["image"]), model._seg(batch)

    def fixed_loss() -> float:
        extra = model.training_inputs(z0, torch.Generator().manual_seed(1))
        with torch.no_grad():
            return float(model._loss(model.denoiser, z0, (seg,), torch.Generator().manual_seed(0), extra=extra))

    before = fixed_loss()
    opt = torch.optim.AdamW(model.denoiser.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(40):
        opt.zero_grad()
        loss = model._loss(model.denoiser, z0, (seg,), None, extra=model.training_inputs(z0))
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def test_generate_works_with_an_inpaint_inputs_checkpoint(tmp_path: Path) -> None:
    """Plain synthesis from such a checkpoint: scripts/generate.py passes m = 1 (the module does, on its own)."""
    import numpy as np

    from scripts.generate import main
    from tests.scripts.conftest import nested_labels, write_nifti

    model = tiny_module(tmp_path, True)
    model.hparams["data_info"] = {
        "name": "synthetic",
        "label_nc": LABEL_NC,
        "voxel_size": [2.0, 1.5, 1.5],
        "intensity": {"kind": "none", "invertible": True},
        "block_size": [8, 16, 16],
    }
    model.latent_norm.fitted.fill_(True)
    ckpt = tmp_path / "stage2.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    labels = tmp_path / "labels"
    write_nifti(labels / "a.nii.gz", nested_labels((16, 16, 8), LABEL_NC), np.diag([1.5, 1.5, 2.0, 1.0]))
    out = tmp_path / "out"
    argv = ["--ckpt", str(ckpt), "--labels", str(labels), "--out", str(out), "--device", "cpu", "--steps", "2"]
    assert main(argv) == 0
    import nibabel as nib

    img = np.asarray(nib.load(next(out.glob("a*.nii.gz"))).dataobj)
    assert img.shape == (16, 16, 8) and np.isfinite(img).all()
    # a model without the option refuses a masked latent: the extra inputs only go where they were trained
    with pytest.raises(ValueError, match="without inpaint_inputs"):
        plain = tiny_module(tmp_path, False)
        plain.latent_norm.fitted.fill_(True)
        plain.sample_images(torch.zeros(1, 8, 16, 16, dtype=torch.long), [torch.Generator()],
                            plain.sampler_defaults.resolve(), inpaint=torch.zeros(1, 5, 4, 8, 8))  # fmt: skip
