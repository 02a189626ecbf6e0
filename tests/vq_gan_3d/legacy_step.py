"""The VQ-GAN training step as it was before issue 13 (reference for the exactness tests and benchmarks).

``legacy_training_step`` is a verbatim copy of the old ``VQGANModule.training_step`` body, with the optimisers
passed in and ``loss.backward()`` for ``manual_backward``: the generator backward also computes (and then drops)
the discriminator weight gradients, the discriminators run twice on the real data, and before the warm-up the
discriminator Adam takes zero-gradient steps. ``run_module_step`` calls the current ``training_step`` the same way,
without a Trainer, so both can be compared step by step on the same module copies and RNG state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from vq_gan_3d.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    sample_slices,
)
from vq_gan_3d.module import VQGANModule, _zero_touch


def legacy_training_step(
    model: VQGANModule,
    batch: Mapping[str, torch.Tensor],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gan_active: bool,
    after_generator_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One old-style batch: batch ``{"image": (B, 1, D, H, W), "label": (B, 1, D, H, W)}``; returns g_loss."""
    hp = model.hparams
    x = batch["image"]
    seg = model._seg_from_batch(batch)
    zero = x.new_zeros(())
    x_hat, vq = model(x, seg)
    frames, frames_hat = sample_slices(x, x_hat, hp.slices_per_sample)
    rec_loss = F.l1_loss(x_hat, x)
    perceptual = model._perceptual_loss(frames, frames_hat) if hp.perceptual_weight > 0 else zero
    g = {"g_image_loss": zero, "g_volume_loss": zero, "image_gan_feat_loss": zero, "volume_gan_feat_loss": zero}
    if gan_active:
        for name, disc, real, fake, weight in (
            ("image", model.image_discriminator, frames, frames_hat, hp.image_gan_weight),
            ("volume", model.volume_discriminator, x, x_hat, hp.video_gan_weight),
        ):
            if weight > 0:
                logits_fake, feats_fake = disc(fake)
                with torch.no_grad():
                    _, feats_real = disc(real)
                g[f"g_{name}_loss"] = generator_adversarial_loss(logits_fake, hp.disc_loss_type)
                g[f"{name}_gan_feat_loss"] = feature_matching_loss(feats_fake, feats_real)
    g_loss = (
        hp.l1_weight * rec_loss
        + vq.commitment_loss
        + hp.perceptual_weight * perceptual
        + hp.image_gan_weight * g["g_image_loss"]
        + hp.video_gan_weight * g["g_volume_loss"]
        + hp.gan_feat_weight * (g["image_gan_feat_loss"] + g["volume_gan_feat_loss"])
    )
    opt_g.zero_grad(set_to_none=True)
    (g_loss + _zero_touch(model._discriminator_params())).backward()
    if after_generator_backward is not None:
        after_generator_backward()
    opt_g.step()
    d_loss = zero
    if gan_active:
        for disc, real, fake, weight in (
            (model.image_discriminator, frames, frames_hat, hp.image_gan_weight),
            (model.volume_discriminator, x, x_hat, hp.video_gan_weight),
        ):
            if weight > 0:
                logits_real, _ = disc(real.detach())
                logits_fake, _ = disc(fake.detach())
                d_loss = d_loss + weight * discriminator_loss(logits_real, logits_fake, hp.disc_loss_type)
    opt_d.zero_grad(set_to_none=True)
    (d_loss + _zero_touch(model._discriminator_params() + model._generator_params())).backward()
    opt_d.step()
    return g_loss.detach()


def run_module_step(
    model: VQGANModule,
    batch: Mapping[str, torch.Tensor],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    after_generator_backward: Callable[[], None] | None = None,
    before_generator_backward: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the current ``model.training_step`` without a Trainer (GAN state from ``global_step`` = 0).

    ``manual_backward`` becomes ``loss.backward(**kwargs)``; ``after_generator_backward`` runs after the
    generator's backward (the first one without ``inputs`` or with the generator's parameters as ``inputs``) and
    ``before_generator_backward`` just before it. ``optimizers()`` returns ``(opt_g, opt_d)``, logging is
    captured, gradient clipping is not applied (it runs in ``on_before_optimizer_step`` under a Trainer).
    Returns the logged values.
    """
    logged: dict[str, Any] = {}
    done = [False]
    first_gen = model._generator_params()[0]

    def backward(loss: torch.Tensor, **kwargs: Any) -> None:
        inputs = kwargs.get("inputs")
        is_gen = not done[0] and (inputs is None or any(p is first_gen for p in inputs))
        if is_gen and before_generator_backward is not None:
            before_generator_backward()
        loss.backward(**kwargs)
        if is_gen:
            done[0] = True
            if after_generator_backward is not None:
                after_generator_backward()

    patches = {
        "optimizers": lambda: (opt_g, opt_d),
        "manual_backward": backward,
        "log": lambda name, value, **kw: logged.__setitem__(name, value),
        "log_dict": lambda values, **kw: logged.update(values),
    }
    model.__dict__.update(patches)
    try:
        model.training_step(batch, 0)
    finally:
        for key in patches:
            model.__dict__.pop(key)
    return logged


def adam_pair(model: VQGANModule) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The module's two Adam optimisers (generator, discriminators)."""
    opt_g, opt_d = model.configure_optimizers()
    return opt_g, opt_d
