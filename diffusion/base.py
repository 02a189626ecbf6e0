"""``LatentDiffusionBase``: what every latent diffusion on a frozen autoencoder shares (SPEC section 12).

Stage 2 (:class:`~diffusion.module.LatentDiffusionModule`, image latents conditioned on label maps) and the label
diffusion (:class:`~diffusion.label_diffusion.LabelLatentDiffusion`, label latents conditioned on attributes) are
both: a frozen autoencoder, a denoiser with an EMA copy, a latent normaliser, a noise schedule, the diffusion loss,
AdamW, sampler defaults and seeded validation. This class holds that once; a subclass builds its autoencoder and
denoiser, says how its conditioning reaches the network (the ``cond`` of :meth:`LatentDiffusionBase._loss`), and
measures its statistics (:meth:`LatentDiffusionBase.fit_statistics`) from the batches this class reads.

Shared hyperparameters (the subclass's ``__init__`` declares them, with its own defaults, and calls
``save_hyperparameters``; this class reads them from ``self.hparams``):

* ``objective``, ``num_train_timesteps``, ``schedule``, ``prediction_type``, ``clip_sample``,
  ``rflow_sample_method`` (and ``rflow_timestep_transform`` where declared): the
  :class:`~diffusion.schedulers.NoiseSchedule` ("ddpm" Gaussian diffusion or "rflow" rectified flow; T training
  steps; the ddpm noise schedule; prediction "epsilon", "sample" (x0) or "v_prediction"; clamp of the predicted x0
  while sampling, None for none; "uniform" or "logit-normal" rflow training timesteps).
* ``loss_type``: "l1" or "l2" between prediction and the objective's target.
* ``p_uncond``: probability of dropping a training sample's whole condition (classifier-free guidance).
* ``guidance``, ``sampler``, ``sample_steps``, ``ddim_eta``: sampler defaults (:attr:`sampler_defaults`):
  w of ``u + w·(c − u)`` (1: conditional only; the reference's ``cond_scale=1.5`` is w = 2.5), "ddpm" (all T
  steps), "ddim" or "rflow", the steps of ddim/rflow, DDIM η (0 deterministic, 1 ancestral).
* ``latent_norm_per_channel``: latent statistics per channel or global.
* ``lr``, ``betas``, ``weight_decay``: AdamW over the denoiser.
* ``ema_decay``, ``ema_update_every``, ``ema_start_step``: the EMA of the denoiser (:class:`~diffusion.ema.EMA`;
  before ``ema_start_step`` it copies the weights instead of averaging).
* ``val_seed``: seed of the validation noise, timesteps and samples.
* ``val_sample_every_n`` (where declared; else never): validation runs between sampling ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.ema import EMA
from diffusion.latent_norm import LatentNormalizer
from diffusion.sampling import SamplerDefaults
from diffusion.schedulers import NoiseSchedule

log = logging.getLogger(__name__)

LOSS_TYPES = ("l1", "l2")


class LatentDiffusionBase(pl.LightningModule):
    """Base of the latent diffusions: loss, EMA, optimiser, latent statistics, sampler defaults, validation runs.

    Subclasses call :meth:`_check_diffusion_args` and :meth:`_init_diffusion` in ``__init__`` after
    ``save_hyperparameters()``, and implement :attr:`autoencoder`, :attr:`stats_batches`,
    :attr:`statistics_fitted` and :meth:`fit_statistics`.
    """

    @property
    def autoencoder(self) -> nn.Module:
        """The frozen autoencoder whose latents are diffused (kept in eval mode by :meth:`train`)."""
        raise NotImplementedError

    def _check_diffusion_args(self, *positive: str) -> None:
        """Refuse shared hyperparameters out of range; ``positive``: the subclass's own ones that must be >= 1."""
        hp = self.hparams
        if hp.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {hp.loss_type!r}")
        if not 0.0 <= hp.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {hp.p_uncond}")
        if hp.guidance < 0 or hp.ddim_eta < 0:
            raise ValueError(f"guidance and ddim_eta must be >= 0, got {hp.guidance}, {hp.ddim_eta}")
        if hp.lr <= 0 or hp.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {hp.lr}, {hp.weight_decay}")
        if len(hp.betas) != 2 or not all(0.0 <= b < 1.0 for b in hp.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(hp.betas)}")
        for key in ("sample_steps", *positive):
            if hp[key] < 1:
                raise ValueError(f"{key} must be >= 1, got {hp[key]}")

    def _init_diffusion(self, denoiser: nn.Module, latent_channels: int, latent_norm: str, compile: bool) -> None:
        """The denoiser, its EMA copy, the latent normaliser and the noise schedule from the hyperparameters.

        Args:
            denoiser: the network (trained; its EMA copy is made here).
            latent_channels: channels of the autoencoder's latent.
            latent_norm: :class:`~diffusion.latent_norm.LatentNormalizer` mode.
            compile: wrap the denoiser and its EMA copy with ``torch.compile`` (in place: the state-dict keys stay).
        """
        hp = self.hparams
        self.denoiser = denoiser
        self.ema = EMA(denoiser, hp.ema_decay, hp.ema_update_every, hp.ema_start_step)
        if compile:  # after the EMA's deep copy: both are compiled, neither gains an ``_orig_mod.`` key prefix
            self.denoiser.compile()
            self.ema.module.compile()
        self.latent_norm = LatentNormalizer(latent_channels, latent_norm, hp.latent_norm_per_channel)
        self.schedule = NoiseSchedule(
            hp.objective, hp.num_train_timesteps, hp.schedule, hp.prediction_type, hp.clip_sample,
            hp.rflow_sample_method, hp.get("rflow_timestep_transform", False),
        )  # fmt: skip
        if hp.sampler not in self.schedule.samplers:
            raise ValueError(
                f"sampler {hp.sampler!r} does not fit objective {hp.objective!r}; use {self.schedule.samplers}"
            )
        self._val_runs = 0

    def train(self, mode: bool = True) -> LatentDiffusionBase:
        """As ``nn.Module.train``, but the frozen autoencoder and the EMA copy always stay in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        self.ema.eval()
        return self

    @property
    def sampler_defaults(self) -> SamplerDefaults:
        """This model's sampler defaults (its hyperparameters) and the samplers its objective allows."""
        hp = self.hparams
        return SamplerDefaults(hp.sampler, hp.sample_steps, hp.guidance, hp.ddim_eta, self.schedule.samplers)

    # ------------------------------------------------------------------ training
    def _loss(
        self,
        net: nn.Module,
        z0: torch.Tensor,
        cond: Sequence[torch.Tensor],
        generator: torch.Generator | None,
        noise: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Diffusion loss of ``net`` on clean latents z0 (B, C, d, h, w): ``net(x_t, t, *cond)`` vs the target.

        ``noise``: (B, C, d, h, w), the noise paired with z0 (a reflow pair); None draws it from ``generator``.
        ``extra``: (B, E, d, h, w) inputs concatenated to x_t (a denoiser with ``extra_channels``); None: none.
        """
        if noise is None:
            noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        t = self.schedule.sample_timesteps(z0.shape[0], z0.device, generator)
        x_t = self.schedule.add_noise(z0, noise, t)
        if extra is not None:
            x_t = torch.cat((x_t, extra.to(x_t.dtype)), dim=1)
        pred = net(x_t, t, *cond).float()
        return self._distance(pred, self.schedule.target(z0, noise, t))

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss between a prediction and its target, both (B, C, d, h, w): mean L1 or squared error."""
        return F.l1_loss(pred, target) if self.hparams.loss_type == "l1" else F.mse_loss(pred, target)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then update the EMA (after real steps only, so accumulation is respected)."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.denoiser, self.global_step + 1)  # global_step counts the steps completed before this one

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the denoiser only (autoencoder frozen, EMA not trained)."""
        hp = self.hparams
        return torch.optim.AdamW(
            self.denoiser.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )

    # ------------------------------------------------------------------ statistics
    @property
    def statistics_fitted(self) -> bool:
        """Whether the training statistics are set (a trained or resumed model carries them in its buffers)."""
        raise NotImplementedError

    def fit_statistics(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """Measure the training statistics from the first training batches (lazy: read only when iterated)."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        """Measure the statistics once, before the sanity check samples (skipped when they are already set)."""
        if not self.statistics_fitted:
            self.fit_statistics(self._training_batches())

    def _training_batches(self) -> Iterator[Mapping[str, torch.Tensor]]:
        """The first statistics batches of a fresh training loader of the datamodule (created on first use)."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise RuntimeError("the training statistics are measured on the datamodule: fit with datamodule=...")
        yield from islice(datamodule.train_dataloader(), self.stats_batches)

    @property
    def stats_batches(self) -> int:
        """Training batches read at fit start for the statistics."""
        raise NotImplementedError

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:  # count real validation runs only
            self._val_runs += 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the validation count, so a resumed run samples at the same validations as an uninterrupted one."""
        checkpoint["val_runs"] = self._val_runs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._val_runs = int(checkpoint.get("val_runs", 0))

    def _sampling_this_run(self) -> bool:
        """Whether this validation run samples (every ``val_sample_every_n``-th; never where it is not declared)."""
        n = self.hparams.get("val_sample_every_n", 0)
        # the sanity check (before the first run is counted) samples too: it catches sampling errors early
        return n > 0 and max(self._val_runs - 1, 0) % n == 0

    def _generator(self, offset: int = 0) -> torch.Generator:
        """The seeded validation generator number ``offset`` (e.g. the batch index) on the model's device."""
        return torch.Generator(device=self.device).manual_seed(self.hparams.val_seed + offset)
