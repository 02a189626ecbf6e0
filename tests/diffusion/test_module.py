"""LatentDiffusionModule: a real Lightning fit, frozen first stage, EMA, overfitting, one-file checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dataset.contract import one_hot
from diffusion.module import LatentDiffusionModule
from tests.diffusion.helpers import IMAGE, LABEL_NC, TinyData, save_tiny_vqgan, tiny_loader

DENOISER = {
    "dim": 8,
    "dim_mults": [1],
    "attn_heads": 2,
    "attn_dim_head": 8,
    "label_channels": 4,
    "label_hidden": [4],
    "spade_hidden": 8,
}
FIT_STEPS = 60


def _module(ckpt: Path | None, **kwargs: object) -> LatentDiffusionModule:
    args = {
        "label_nc": LABEL_NC, "first_stage_ckpt": str(ckpt) if ckpt else None, "block_size": list(IMAGE),
        "denoiser_kwargs": DENOISER, "num_train_timesteps": 50, "sample_steps": 4, "val_sample_steps": 3,
        "latent_stats_batches": 1, **kwargs,
    }  # fmt: skip
    return LatentDiffusionModule(**args)


def _seg(batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return one_hot(torch.randint(0, LABEL_NC, (batch, 1, *IMAGE), generator=g), LABEL_NC)


def _probe_loss(model: LatentDiffusionModule) -> float:
    """Seeded diffusion loss of the training weights on the (only) training batch, averaged over 4 draws."""
    batch = next(iter(tiny_loader()))
    z0, seg = model.encode(batch["image"]), one_hot(batch["label"], LABEL_NC)
    with torch.no_grad():
        losses = [model._loss(model.denoiser, z0.repeat(4, 1, 1, 1, 1), (seg.repeat(4, 1, 1, 1, 1),),
                              torch.Generator().manual_seed(s)) for s in range(4)]  # fmt: skip
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real fit: overfit the single training batch for FIT_STEPS optimiser steps, then one validation run."""
    root = tmp_path_factory.mktemp("fit")
    ckpt = save_tiny_vqgan(root / "vqgan.ckpt")
    pl.seed_everything(0)
    model = _module(ckpt, loss_type="l2", lr=1e-2, p_uncond=0.0, ema_update_every=1, ema_start_step=FIT_STEPS // 2)
    first_stage_before = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    model.latent_norm.fit_std([model.first_stage.encode(next(iter(tiny_loader()))["image"])])
    loss_before = _probe_loss(model)
    model.latent_norm.fitted.fill_(False)  # let on_fit_start measure the statistics, as in a real run
    trainer = pl.Trainer(
        max_steps=FIT_STEPS, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=FIT_STEPS, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(model, datamodule=TinyData())
    return {"model": model, "trainer": trainer, "vq_ckpt": ckpt, "root": root, "loss_before": loss_before,
            "first_stage_before": first_stage_before}  # fmt: skip


def test_overfitting_one_batch_halves_the_loss(fitted: dict) -> None:
    loss_after = _probe_loss(fitted["model"])
    assert loss_after <= 0.5 * fitted["loss_before"], f"loss {fitted['loss_before']:.3f} -> {loss_after:.3f}"


def test_first_stage_is_frozen_bit_identical_and_stays_eval(fitted: dict) -> None:
    model = fitted["model"]
    after = model.first_stage.state_dict()
    assert after.keys() == fitted["first_stage_before"].keys()
    for key, before in fitted["first_stage_before"].items():
        assert torch.equal(after[key], before), f"first-stage tensor {key} changed during training"
    assert not any(p.requires_grad for p in model.first_stage.parameters())
    model.train()
    assert model.training and model.denoiser.training
    assert not any(m.training for m in model.first_stage.modules()), "first stage left eval mode after .train()"
    assert not model.ema.module.training


def test_optimiser_and_ema_cover_the_denoiser_only(fitted: dict) -> None:
    model, trainer = fitted["model"], fitted["trainer"]
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.denoiser.parameters()}
    ema_keys = model.ema.state_dict().keys()
    assert not any("first_stage" in k or "codebook" in k for k in ema_keys)
    assert type(model.ema.module) is type(model.denoiser)
    # after the warm-up the EMA averages: its weights trail the trained ones
    assert int(model.ema.averaged.n_averaged) == FIT_STEPS - FIT_STEPS // 2 + 1
    ema_w, raw_w = model.ema.module.final_conv.weight, model.denoiser.final_conv.weight
    assert not torch.equal(ema_w, raw_w)


def test_fit_logs_losses_and_sample_metrics(fitted: dict) -> None:
    metrics = fitted["trainer"].callback_metrics
    for key in ("train/loss", "val/loss", "val/loss_raw", "val/psnr", "val/psnr_first_stage"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert fitted["model"].latent_norm.is_fitted


def test_sample_is_seed_deterministic(fitted: dict) -> None:
    model = fitted["model"].eval()
    seg = _seg(2)
    a = model.sample(seg, generator=torch.Generator().manual_seed(0), guidance=2.0)
    b = model.sample(seg, generator=torch.Generator().manual_seed(0), guidance=2.0)
    c = model.sample(seg, generator=torch.Generator().manual_seed(1), guidance=2.0)
    assert a.shape == (2, 1, *IMAGE) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    ddpm = model.sample(seg[:1], sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert ddpm.shape == (1, 1, *IMAGE)


def test_log_volumes(fitted: dict) -> None:
    batch = next(iter(tiny_loader()))
    out = fitted["model"].log_volumes(batch)
    assert set(out) == {"real", "label", "sample"}
    assert out["sample"].shape == out["real"].shape == batch["image"].shape
    assert out["label"].dtype == torch.int64


def test_checkpoint_round_trip_without_the_first_stage_file(fitted: dict) -> None:
    model, root = fitted["model"].eval(), fitted["root"]
    path = root / "diffusion.ckpt"
    fitted["trainer"].save_checkpoint(path)
    fitted["vq_ckpt"].unlink()  # one diffusion checkpoint must suffice
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "first_stage_hparams" in state["hyper_parameters"]
    assert any(k.startswith("first_stage.codebook.") for k in state["state_dict"])
    assert not any("discriminator" in k for k in state["state_dict"])
    loaded = LatentDiffusionModule.load_from_checkpoint(path, weights_only=True).eval()
    seg = _seg(1, seed=3)
    a = model.sample(seg, generator=torch.Generator().manual_seed(7), guidance=1.5)
    b = loaded.sample(seg, generator=torch.Generator().manual_seed(7), guidance=1.5)
    assert torch.equal(a, b)
    assert loaded.block_size == IMAGE and loaded.latent_factor == (2, 2, 2) and loaded.label_nc == LABEL_NC


def test_spade_decoder_gets_the_label_map(tmp_path: Path) -> None:
    ckpt = save_tiny_vqgan(tmp_path / "spade.ckpt", decoder="spade")
    model = _module(ckpt, latent_norm="none").eval()
    seg = _seg(1)
    z = model.sample_latents(seg, generator=torch.Generator().manual_seed(0))
    other = _seg(1, seed=5)
    assert not torch.equal(model.decode_latents(z, seg), model.decode_latents(z, other))
    with pytest.raises(ValueError, match="label_nc"):
        _module(ckpt, label_nc=4)


def test_rectified_flow_objective(vq_ckpt: Path) -> None:
    model = _module(vq_ckpt, objective="rflow", prediction_type="v_prediction", sampler="rflow",
                    num_train_timesteps=100, latent_norm="none")  # fmt: skip
    batch = next(iter(tiny_loader()))
    loss = model._loss(model.denoiser, model.encode(batch["image"]), (one_hot(batch["label"], LABEL_NC),), None)
    loss.backward()
    assert torch.isfinite(loss) and model.denoiser.final_conv.weight.grad is not None
    assert model.eval().sample(_seg(1), steps=3).shape == (1, 1, *IMAGE)
    with pytest.raises(ValueError, match="does not fit"):
        model.sample(_seg(1), sampler="ddim")


def test_codebook_minmax_statistics_come_from_the_codebook(vq_ckpt: Path) -> None:
    model = _module(vq_ckpt, latent_norm="codebook_minmax", clip_sample=1.0)
    model.on_fit_start()  # codebook mode needs no data (no trainer either)
    codes = model.first_stage.codebook_embeddings
    z = model.latent_norm.normalize(codes.T[None, :, :, None, None])
    assert float(z.min()) == pytest.approx(-1.0, abs=1e-5) and float(z.max()) == pytest.approx(1.0, abs=1e-5)


def test_sampling_input_checks(vq_ckpt: Path) -> None:
    model = _module(vq_ckpt)
    with pytest.raises(RuntimeError, match="latent statistics"):
        model.sample(_seg(1))
    model.latent_norm.fitted.fill_(True)
    with pytest.raises(ValueError, match="one-hot"):
        model.sample(torch.zeros(1, LABEL_NC + 1, *IMAGE))
    with pytest.raises(ValueError, match="divisible"):
        model.sample(torch.zeros(1, LABEL_NC, 7, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "huber"}, "loss_type"),
        ({"p_uncond": 1.5}, "p_uncond"),
        ({"guidance": -1.0}, "guidance"),
        ({"lr": 0.0}, "lr"),
        ({"betas": [0.9]}, "betas"),
        ({"sample_steps": 0}, "sample_steps"),
        ({"sampler": "rflow"}, "does not fit"),
        ({"denoiser_kwargs": {"label_nc": 3}}, "must not set"),
        ({"block_size": [7, 16, 16]}, "block_size"),
        ({"label_nc": 0}, "label_nc"),
        ({"latent_norm": "minmax"}, "latent_norm"),
        ({"data_info": {"label_nc": 5}}, "data_info"),
    ],
    ids=[
        "loss",
        "p_uncond",
        "guidance",
        "lr",
        "betas",
        "steps",
        "sampler",
        "kwargs",
        "block",
        "label_nc",
        "norm",
        "info",
    ],
)
def test_invalid_args_raise(vq_ckpt: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _module(vq_ckpt, **kwargs)


def test_first_stage_source_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first_stage_ckpt"):
        _module(None)
    with pytest.raises(FileNotFoundError, match="no such"):
        _module(tmp_path / "missing.ckpt")


def test_accumulation_clipping_and_bf16_come_from_the_trainer(vq_ckpt: Path) -> None:
    """Two optimiser steps over four micro-batches in bf16-mixed: the EMA counts optimiser steps, not batches."""
    model = _module(vq_ckpt, ema_update_every=1, ema_start_step=0, val_sample_every_n=0)
    trainer = pl.Trainer(
        max_steps=2, accumulate_grad_batches=2, gradient_clip_val=1.0, precision="bf16-mixed", accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=TinyData(n=4, batch_size=1))
    assert trainer.global_step == 2
    assert int(model.ema.averaged.n_averaged) == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_validation_count_survives_a_checkpoint(vq_ckpt: Path) -> None:
    """A resumed run samples at the same validations as an uninterrupted one (every 2nd here)."""
    model = _module(vq_ckpt, val_sample_every_n=2)
    model._val_runs = 3
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    resumed = _module(vq_ckpt, val_sample_every_n=2)
    resumed.on_load_checkpoint(checkpoint)
    for m in (model, resumed):
        m._val_runs += 1  # the next validation
    assert resumed._val_runs == model._val_runs == 4
    assert resumed._sampling_this_run() == model._sampling_this_run() is False


def test_statistics_come_from_the_datamodule(vq_ckpt: Path) -> None:
    """The latent statistics are read from the datamodule's own training loader; a bare loader is refused clearly."""
    model = _module(vq_ckpt, val_sample_every_n=0)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    with pytest.raises(RuntimeError, match="datamodule"):
        trainer.fit(model, tiny_loader())
    assert not model.latent_norm.is_fitted
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=TinyData())
    assert model.latent_norm.is_fitted
