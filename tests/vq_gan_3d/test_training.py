"""VQGANModule under a real pl.Trainer (CPU): overfitting, step counting, GAN warm-up, EMA once per batch,
gradient clipping, validation metrics, checkpoint save/load/resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.vq_gan_3d.helpers import loader, phantom_batch, seg_of, tiny_model, trainer
from vq_gan_3d.codebook import EMACodebook
from vq_gan_3d.losses import psnr
from vq_gan_3d.module import VQGANModule


class _Recorder(pl.Callback):
    """Per-batch global_step and logged train metrics."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        self.rows.append({"global_step": trainer.global_step, **row})


def _disc_state(model: VQGANModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "discriminator" in k and "running" not in k}


def _gen_state(model: VQGANModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "discriminator" not in k}


def _fit(model: VQGANModule, batches: int, seed: int = 0, callbacks: list | None = None, **kw) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    tr = trainer(2 * batches, callbacks=callbacks or [], **kw)
    tr.fit(model, loader(phantom_batch()))
    return tr


@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_overfits_one_batch(decoder: str) -> None:
    pl.seed_everything(0, verbose=False)
    model = tiny_model(decoder=decoder, lr=1e-3, discriminator_iter_start=12)
    rec = _Recorder()
    _fit(model, batches=15, callbacks=[rec])
    first = rec.rows[0]["train/rec_loss"]
    batch = phantom_batch()
    model.eval()
    with torch.no_grad():
        x_hat, _ = model(batch["image"], seg_of(batch) if decoder == "spade" else None)
    final = (x_hat - batch["image"]).abs().mean().item()
    assert final <= 0.5 * first, (first, final)  # eval-mode L1 after training vs the first training batch
    assert rec.rows[-1]["train/gan_active"] == 1.0  # the last batches ran with the discriminators on


def test_gan_terms_have_no_effect_before_warm_up() -> None:
    pl.seed_everything(1, verbose=False)
    warm = tiny_model(discriminator_iter_start=1000)
    pl.seed_everything(1, verbose=False)
    no_gan = tiny_model(image_gan_weight=0.0, volume_gan_weight=0.0, gan_feat_weight=0.0)
    disc_before = _disc_state(warm)
    _fit(warm, batches=2)
    _fit(no_gan, batches=2)
    for k, v in _gen_state(no_gan).items():  # generator saw exactly the non-GAN objective
        assert torch.equal(_gen_state(warm)[k], v), k
    for k, v in disc_before.items():  # discriminators not updated
        assert torch.equal(_disc_state(warm)[k], v), k


def test_two_steps_per_batch_and_warm_up_counted_in_batches() -> None:
    pl.seed_everything(2, verbose=False)
    model = tiny_model(discriminator_iter_start=1)
    disc_before = _disc_state(model)
    rec = _Recorder()
    _fit(model, batches=3, callbacks=[rec])
    assert [r["global_step"] for r in rec.rows] == [2, 4, 6]
    assert [r["train/gan_active"] for r in rec.rows] == [0.0, 1.0, 1.0]
    assert "train/d_image_loss" in rec.rows[-1] and "train/logits_volume_fake" in rec.rows[-1]
    assert any(not torch.equal(v, _disc_state(model)[k]) for k, v in disc_before.items())
    # with the GAN on, the generator differs from a run without GAN terms
    pl.seed_everything(2, verbose=False)
    no_gan = tiny_model(image_gan_weight=0.0, volume_gan_weight=0.0, gan_feat_weight=0.0)
    _fit(no_gan, batches=3)
    assert not torch.equal(no_gan.decoder.conv_last.conv.weight, model.decoder.conv_last.conv.weight)


def test_codebook_ema_updates_once_per_batch() -> None:
    model = tiny_model(random_restart=False)
    batch = phantom_batch()
    model.train()(batch["image"])  # initialise the codebook outside the run
    n0 = model.codebook.N.clone()
    model.eval()  # also checks that fit puts the module back into training mode (Lightning 2.x does not)
    counts = torch.bincount(model.codebook(model.encode(batch["image"])).indices.flatten(), minlength=32).float()
    _fit(model, batches=1)
    torch.testing.assert_close(model.codebook.N, 0.99 * n0 + 0.01 * counts)  # twice would be 0.9801 n0 + ...


class _ClipProbe(VQGANModule):
    norms: list[float]

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_gradients_are_clipped_per_optimiser() -> None:
    from tests.vq_gan_3d.helpers import TINY

    model = _ClipProbe(**{**TINY, "gradient_clip_val": 1e-3, "discriminator_iter_start": 0})
    model.norms = []
    _fit(model, batches=1)
    assert len(model.norms) == 2 and all(0 < n <= 1e-3 * 1.001 for n in model.norms), model.norms


def test_validation_metrics() -> None:
    model = tiny_model(decoder="spade")
    batch = phantom_batch()
    model.train()(batch["image"], seg_of(batch))
    metrics = trainer(1).validate(model, loader(batch), verbose=False)[0]
    assert {"val/rec_loss", "val/psnr", "val/perplexity", "val/code_usage", "val/commitment_loss"} <= set(metrics)
    model.eval()
    with torch.no_grad():
        x_hat, _ = model(batch["image"], seg_of(batch))
    assert metrics["val/rec_loss"] == pytest.approx((x_hat - batch["image"]).abs().mean().item(), rel=1e-5)
    assert metrics["val/psnr"] == pytest.approx(psnr(x_hat, batch["image"]).mean().item(), rel=1e-5)


def test_checkpoint_round_trip_and_resume_without_reinit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(decoder="spade")
    tr = _fit(model, batches=1, default_root_dir=str(tmp_path))
    path = tmp_path / "vqgan.ckpt"
    tr.save_checkpoint(path)

    loaded = VQGANModule.load_from_checkpoint(path, weights_only=True)
    assert dict(loaded.hparams) == dict(model.hparams)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert bool(loaded.codebook.initialized)

    first_stage = VQGANModule.load_from_checkpoint(path, weights_only=True, inference_only=True)
    assert not hasattr(first_stage, "volume_discriminator")

    # Resuming must restore the codebook before the first forward: any re-initialisation fails the run.
    def _no_reinit(self, flat):
        raise AssertionError("codebook re-initialised on resume")

    monkeypatch.setattr(EMACodebook, "_init_embeddings", _no_reinit)
    resumed = tiny_model(decoder="spade")
    tr2 = trainer(4, default_root_dir=str(tmp_path))
    tr2.fit(resumed, loader(phantom_batch()), ckpt_path=str(path))
    assert tr2.global_step == 4
