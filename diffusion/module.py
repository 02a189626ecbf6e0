"""``LatentDiffusionModule``: semantic latent diffusion on a frozen 3D VQ-GAN (Med-LSDM stage 2).

Training step: encode the image with the frozen VQ-GAN (no grad) → normalise the latent → drop the label map to
the null map with probability ``p_uncond`` (classifier-free guidance) → noise at a random timestep → predict →
L1/L2 loss against the objective's target. Automatic optimisation: gradient accumulation, clipping and mixed
precision come from the Trainer config. An EMA copy of the denoiser is updated after optimiser steps and used for
validation sampling and :meth:`LatentDiffusionModule.sample`.

Reference bugs not reproduced (reference-notes §6): the first stage is frozen, in eval mode even after
``train()``, outside the optimiser and the EMA, and stored without discriminators/LPIPS (items 7, 32); label maps
are dropped during training so the guidance's null branch is trained (item 6); the label encoder is aligned with the
latent along depth (item 5); the middle blocks see the time embedding (item 31); width is independent of the
latent size (item 28); validation noise and timesteps are seeded.

Logged keys: ``train/loss``; ``val/loss`` (EMA denoiser, fixed noise and timesteps per batch), ``val/loss_raw``
(training weights, same noise), and every ``val_sample_every_n`` validation runs ``val/psnr`` (decoded sample vs the
real image, data range 2, per volume, averaged) and ``val/psnr_first_stage`` (VQ-GAN reconstruction vs the real
image: the ceiling of ``val/psnr``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataset.contract import one_hot
from dataset.registry import plain_data_info
from diffusion.base import LatentDiffusionBase
from diffusion.denoiser_factory import build_denoiser
from diffusion.first_stage import architecture_hparams, build_first_stage, decode_first_stage, load_first_stage
from diffusion.guidance import drop_labels
from diffusion.inpaint_inputs import inpaint_context, plain_context, random_region_masks
from diffusion.sampling import DEFAULT_MAX_PLANE, SamplerSettings, decode_windows, latent_window, sample_windows
from diffusion.schedulers import StepHook
from vq_gan_3d.losses import psnr

log = logging.getLogger(__name__)


class LatentDiffusionModule(LatentDiffusionBase):
    """Semantic latent diffusion conditioned on one-hot label maps, with the frozen VQ-GAN inside.

    The hyperparameters shared with the label diffusion (schedule, loss, guidance, sampler defaults, optimiser,
    EMA, validation seed) are read by :class:`~diffusion.base.LatentDiffusionBase`; the defaults here are the paper's.

    Args:
        label_nc: K, one-hot classes (``${dataset.label_nc}``).
        first_stage_ckpt: stage-1 (VQ-GAN) Lightning checkpoint to load when training starts. Not opened when
            ``first_stage_hparams`` is set (i.e. when a diffusion checkpoint is loaded): the first stage then comes
            from the diffusion checkpoint itself.
        first_stage_hparams: the VQ-GAN's hyperparameters; filled in from ``first_stage_ckpt`` and saved with the
            diffusion hyperparameters, so ``load_from_checkpoint`` rebuilds the first stage without the original
            file. Set by hand only to build an untrained first stage (tests).
        block_size: (D, H, W) of the training blocks (``${dataset.block_size}``), for block-wise generation.
        data_info: the dataset config the model is trained on (``${dataset}``), stored in the checkpoint as plain
            data for generation (:func:`dataset.registry.plain_data_info`: name, voxel size, intensity, class names,
            block size, root, the dataset's plain arguments; never a ``_target_``); not used in training.
        denoiser: "unet3d_spade" (Med-LSDM), "unet3d" (no SPADE; labels concatenated or absent) or "monai_spade".
        denoiser_kwargs: constructor arguments of the chosen denoiser (``dim``, ``dim_mults``, ``attn_heads``, ...).
        rflow_timestep_transform: resolution-aware shift of rflow sampling timesteps (MAISI).
        latent_norm: "std" (mean/std of training latents), "codebook_minmax" (reference) or "none".
        latent_stats_batches: training batches encoded at fit start to measure the "std" statistics.
        val_sample_every_n: sample and log ``val/psnr`` every n-th validation run (0: never).
        val_sample_batches: validation batches that are sampled in such a run.
        val_sample_steps: sampler steps for validation sampling and :meth:`log_volumes`.
        objective, num_train_timesteps, schedule, prediction_type, loss_type, clip_sample, rflow_sample_method,
            p_uncond, guidance, sampler, sample_steps, ddim_eta, latent_norm_per_channel, lr, betas, weight_decay,
            ema_decay, ema_update_every, ema_start_step, val_seed: shared with the label diffusion, see
            :class:`~diffusion.base.LatentDiffusionBase`; the defaults are the paper's (cosine schedule, T = 500,
            ε-prediction, L1, AdamW lr 1e-5, EMA 0.995 every 10 steps from step 2000, DDIM 50 steps, w = 2.5).
        compile: wrap the denoiser and its EMA copy with ``torch.compile`` (``nn.Module.compile``: in place, so the
            state-dict keys stay the same and checkpoints load either way). Compiles lazily on the first call.
        inpaint_inputs: the denoiser also takes the masked real latent and the region mask (C + 1 more input
            channels, :mod:`diffusion.inpaint_inputs`), trained on random regions, so editing a real scan
            (:mod:`diffusion.editing.inpaint`) can condition on the known context. Plain synthesis passes m = 1.
            Off (the default): the model is exactly the plain one.
        inpaint_mask_p: with ``inpaint_inputs``, the per-item probability of a random region in training (else
            m = 1 everywhere: plain synthesis).
    """

    def __init__(
        self,
        label_nc: int,
        first_stage_ckpt: str | None = None,
        first_stage_hparams: dict | None = None,
        block_size: Sequence[int] | None = None,
        data_info: dict | None = None,
        denoiser: str = "unet3d_spade",
        denoiser_kwargs: dict | None = None,
        objective: str = "ddpm",
        num_train_timesteps: int = 500,
        schedule: str = "cosine",
        prediction_type: str = "epsilon",
        loss_type: str = "l1",
        clip_sample: float | None = None,
        rflow_sample_method: str = "uniform",
        rflow_timestep_transform: bool = False,
        p_uncond: float = 0.1,
        guidance: float = 2.5,
        sampler: str = "ddim",
        sample_steps: int = 50,
        ddim_eta: float = 0.0,
        latent_norm: str = "std",
        latent_norm_per_channel: bool = True,
        latent_stats_batches: int = 8,
        lr: float = 1e-5,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        ema_start_step: int = 2000,
        val_sample_every_n: int = 1,
        val_sample_batches: int = 1,
        val_sample_steps: int = 25,
        val_seed: int = 0,
        compile: bool = False,
        inpaint_inputs: bool = False,
        inpaint_mask_p: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Plain data only: the dataset config's datamodule node (and any call target) never reaches the checkpoint,
        # and an older checkpoint's is dropped here on load (dataset.registry builds datasets from a fixed table).
        self.hparams["data_info"] = plain_data_info(data_info)
        self._check_args()

        # 1. Frozen first stage: from the stored hparams (diffusion checkpoint) or from the stage-1 checkpoint.
        if first_stage_hparams is not None:
            self.first_stage = build_first_stage(first_stage_hparams)
        elif first_stage_ckpt is not None:
            self.first_stage = load_first_stage(first_stage_ckpt)
            self.hparams["first_stage_hparams"] = architecture_hparams(self.first_stage)
        else:
            raise ValueError("set first_stage_ckpt (a VQ-GAN checkpoint) or first_stage_hparams")
        if self.first_stage.decoder_type == "spade" and self.first_stage.label_nc != label_nc:
            raise ValueError(
                f"the SPADE VQ-GAN was trained with label_nc={self.first_stage.label_nc}, this model has {label_nc}"
            )
        self.label_nc = label_nc
        self.block_size = tuple(int(s) for s in block_size) if block_size is not None else None
        if self.block_size is not None and (
            len(self.block_size) != 3 or any(s % f for s, f in zip(self.block_size, self.latent_factor))
        ):
            raise ValueError(f"block_size {list(self.block_size)} must be 3 sizes divisible by {self.latent_factor}")

        # 2. Denoiser, its EMA copy, the latent normaliser and the noise schedule.
        kwargs = dict(denoiser_kwargs or {})
        clash = {"channels", "label_nc", "latent_factor", "extra_channels"} & set(kwargs)
        if clash:
            raise ValueError(f"denoiser_kwargs must not set {sorted(clash)}: they come from the first stage")
        self.inpaint_inputs = bool(inpaint_inputs)
        extra = self.first_stage.embedding_dim + 1 if self.inpaint_inputs else 0
        net = build_denoiser(denoiser, self.first_stage.embedding_dim, label_nc, self.latent_factor, kwargs, extra)
        self._init_diffusion(net, self.first_stage.embedding_dim, latent_norm, compile)
        log.info("denoiser %s: %.2fM parameters", denoiser, sum(p.numel() for p in self.denoiser.parameters()) / 1e6)

    def _check_args(self) -> None:
        hp = self.hparams
        if not isinstance(hp.label_nc, int) or hp.label_nc < 1:
            raise ValueError(f"label_nc must be a positive int, got {hp.label_nc!r}")
        self._check_diffusion_args("latent_stats_batches", "val_sample_steps")
        if hp.val_sample_every_n < 0 or hp.val_sample_batches < 0:
            raise ValueError("val_sample_every_n and val_sample_batches must be >= 0")
        info = hp.data_info
        if info is not None and (not isinstance(info, Mapping) or info.get("label_nc", hp.label_nc) != hp.label_nc):
            raise ValueError(f"data_info must be the dataset config (a dict) with label_nc={hp.label_nc}")
        if not 0.0 <= hp.get("inpaint_mask_p", 0.5) <= 1.0:
            raise ValueError(f"inpaint_mask_p must be in [0, 1], got {hp.inpaint_mask_p}")
        if hp.denoiser_kwargs is not None and not isinstance(hp.denoiser_kwargs, Mapping):
            raise ValueError(f"denoiser_kwargs must be a dict, got {type(hp.denoiser_kwargs).__name__}")

    # ------------------------------------------------------------------ first stage and latents
    @property
    def latent_factor(self) -> tuple[int, int, int]:
        """(fd, fh, fw): image size / latent size per axis."""
        return self.first_stage.latent_factor

    @property
    def autoencoder(self) -> nn.Module:
        """The frozen first stage (VQ-GAN)."""
        return self.first_stage

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 1, D, H, W) in [-1, 1] → normalised latent (B, E, D/fd, H/fh, W/fw), float32, no graph."""
        return self.latent_norm.normalize(self.first_stage.encode(x).float())

    def training_inputs(self, z0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ``inpaint_inputs`` of a training batch of clean latents z0 (B, C, d, h, w): (B, C + 1, d, h, w).

        Per item a random region with probability ``inpaint_mask_p`` (:func:`random_region_masks`), else m = 1.
        ``generator``: CPU RNG; None draws from the global one, which the run's ``seed`` seeds.
        """
        p = self.hparams.inpaint_mask_p
        return inpaint_context(z0, random_region_masks(z0.shape[0], z0.shape[2:], p, generator, z0.device))

    def plain_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """The ``inpaint_inputs`` of plain synthesis for latents z (B, C, d, h, w): (B, C + 1, d, h, w), m = 1."""
        return plain_context(z.shape[0], z.shape[1], z.shape[2:], z.device)

    def _seg(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return one_hot(batch["label"], self.label_nc)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss on one batch ``{"image": (B, 1, D, H, W), "label": (B, 1, D, H, W) int64, ...}``."""
        z0 = self.encode(batch["image"])
        seg = drop_labels(self._seg(batch), self.hparams.p_uncond)
        extra = self.training_inputs(z0) if self.inpaint_inputs else None
        loss = self._loss(self.denoiser, z0, (seg,), None, extra=extra)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=z0.shape[0])
        return loss

    # ------------------------------------------------------------------ latent statistics
    @property
    def stats_batches(self) -> int:
        return self.hparams.latent_stats_batches

    @property
    def statistics_fitted(self) -> bool:
        return self.latent_norm.is_fitted

    def fit_statistics(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """The latent normalisation: the codebook's range, or the mean/std of the training batches' latents."""
        if self.latent_norm.mode == "codebook_minmax":
            self.latent_norm.fit_codebook(self.first_stage.codebook_embeddings)
            return
        latents = (self.first_stage.encode(batch["image"].to(self.device)).float() for batch in batches)
        self.latent_norm.fit_std(latents, all_reduce=self._all_reduce_sum)
        log.info("latent statistics from %d training batches", self.stats_batches)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Seeded losses of the EMA and raw denoisers; on sampling runs PSNR of samples (and of the VQ-GAN)."""
        x = batch["image"]
        z0 = self.encode(x)
        seg = self._seg(batch)
        extra = self.plain_inputs(z0) if self.inpaint_inputs else None  # validation: plain synthesis (m = 1)
        # same noise and timesteps for both and for every validation run: comparable numbers
        logs = {
            "loss": self._loss(self.ema.module, z0, (seg,), self._generator(batch_idx), extra=extra),
            "loss_raw": self._loss(self.denoiser, z0, (seg,), self._generator(batch_idx), extra=extra),
        }
        if self._sampling_this_run() and batch_idx < self.hparams.val_sample_batches:
            fake = self.sample(seg, steps=self.hparams.val_sample_steps, generator=self._generator(batch_idx))
            rec = self.decode_latents(self.latent_norm.denormalize(z0), seg)
            logs["psnr"] = psnr(fake, x, data_range=2.0).mean()  # images live in [-1, 1]
            logs["psnr_first_stage"] = psnr(rec, x, data_range=2.0).mean()
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    @torch.no_grad()
    def log_volumes(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Real image, label map and a fast seeded sample for the montage callback.

        Returns:
            ``{"real": (B, 1, D, H, W), "label": (B, 1, D, H, W) int64, "sample": (B, 1, D, H, W)}`` on the CPU.
        """
        x = batch["image"].to(self.device)
        label = batch["label"].to(self.device)
        fake = self.sample(
            one_hot(label, self.label_nc), steps=self.hparams.val_sample_steps, generator=self._generator()
        )
        return {"real": x.float().cpu(), "label": label.cpu(), "sample": fake.float().cpu()}

    # ------------------------------------------------------------------ sampling
    def check_seg(self, seg: torch.Tensor) -> None:
        """Raise ValueError unless ``seg`` is (B, label_nc, D, H, W) with D, H, W divisible by the latent factor."""
        if seg.dim() != 5 or seg.shape[1] != self.label_nc:
            raise ValueError(f"seg must be one-hot (B, {self.label_nc}, D, H, W), got {tuple(seg.shape)}")
        if any(s % f for s, f in zip(seg.shape[2:], self.latent_factor)):
            raise ValueError(f"label map size {tuple(seg.shape[2:])} is not divisible by {self.latent_factor}")

    @torch.no_grad()
    def sample_latents(
        self,
        seg: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        eta: float | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Sample VQ-GAN latents (encoder space, before quantisation) for label maps; see :meth:`sample`.

        Returns:
            (B, E, D/fd, H/fh, W/fw) float32.
        """
        return self._sample(seg, sampler, steps, guidance, generator, progress, eta, use_ema, latents=True)

    def _sample(
        self,
        seg: torch.Tensor,
        sampler: str | None,
        steps: int | None,
        guidance: float | None,
        generator: torch.Generator | None,
        progress: bool,
        eta: float | None,
        use_ema: bool,
        latents: bool,
    ) -> torch.Tensor:
        self.check_seg(seg)
        if not self.latent_norm.is_fitted:
            raise RuntimeError("latent statistics are not set: train this model (or load a trained checkpoint) first")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, the model on {self.device}: create it there")
        settings = self.sampler_defaults.resolve(sampler, steps, guidance, eta, use_ema)
        if generator is None:  # global RNG: one fresh generator seeded from it
            generator = torch.Generator(device=self.device).manual_seed(int(torch.randint(0, 2**62, ()).item()))
        # One generator for the whole batch, as a single noise draw: the items' noise comes from it in order.
        gens = [generator] * seg.shape[0]
        return self.sample_images(seg, gens, settings, progress=progress, return_latents=latents)

    @torch.no_grad()
    def sample_images(
        self,
        labels: torch.Tensor,
        generators: Sequence[torch.Generator],
        settings: SamplerSettings,
        *,
        train_window: Sequence[int] | None = None,
        window_mode: str = "auto",
        overlap: float = 0.5,
        max_plane: int = DEFAULT_MAX_PLANE,
        progress: bool = False,
        return_latents: bool = False,
        step_hook: StepHook | None = None,
        inpaint: torch.Tensor | None = None,
        resample: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Generate images for label maps of one shape, whole latent or windows (:mod:`diffusion.sampling`).

        The one sampling path of this model: :meth:`sample`, validation, montages and ``scripts/generate.py``.

        Args:
            labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps; D, H, W multiples of the latent factor.
            generators: B generators on the model's device (item i's noise comes from ``generators[i]``).
            settings: ``self.sampler_defaults.resolve(...)``.
            train_window: training block (D, H, W) in image voxels; None treats the whole map as one block.
            window_mode: "auto" (whole plane, training depth) or "block" (training window on every axis).
            overlap: window overlap along tiled axes, denoising and decoding.
            max_plane: in-plane latent voxels above which "auto" tiles in-plane too.
            progress: progress bar over the steps.
            return_latents: return the de-normalised latents (B, E, d, h, w) instead of decoding.
            step_hook: called on the normalised latent before every step and at the end
                (:data:`diffusion.schedulers.StepHook`; editing imposes the real scan's latent with it).
            inpaint: (B, C + 1, d, h, w) extra inputs of an ``inpaint_inputs`` model
                (:func:`diffusion.inpaint_inputs.inpaint_context`: masked real latent, region mask); None: plain
                synthesis (m = 1). Refused for a model without the option.
            resample: RePaint's resampling jumps (jump length, count), for editing
                (:meth:`diffusion.schedulers.NoiseSchedule.sample`); None: none.

        Returns:
            (B, 1, D, H, W) images in [-1, 1] (or latents, see ``return_latents``).
        """
        if not self.latent_norm.is_fitted:
            raise RuntimeError("latent statistics are not set: train this model (or load a trained checkpoint) first")
        if len(generators) != labels.shape[0]:
            raise ValueError(f"need one generator per label map: {len(generators)} for a batch of {labels.shape[0]}")
        if labels.dim() == 5:
            self.check_seg(labels)
        net = self.ema.module if settings.use_ema else self.denoiser
        window = latent_window(
            labels.shape[-3:], self.latent_factor, train_window, window_mode, max_plane, net.size_multiple
        )
        labels = labels.to(self.device)
        channels = self.first_stage.embedding_dim
        if inpaint is not None and not self.inpaint_inputs:
            raise ValueError("this model was trained without inpaint_inputs: it takes no masked latent and mask")
        if self.inpaint_inputs and inpaint is None:
            latent = [labels.shape[0], channels, *(s // f for s, f in zip(labels.shape[-3:], self.latent_factor))]
            inpaint = self.plain_inputs(labels.new_zeros(latent, dtype=torch.float32))
        z = sample_windows(net, self.schedule, labels, self.label_nc, generators, settings, channels,
                           self.latent_factor, window, overlap, progress, step_hook, extra=inpaint,
                           resample=resample)  # fmt: skip
        z = self.latent_norm.denormalize(z)
        if return_latents:
            return z
        # the VQ-GAN decoder is convolutional: it decodes the same windows (whole planes by default); the normal
        # decoder never sees labels, so no one-hot map is made for it
        spade = self.first_stage.decoder_type == "spade"
        decode = functools.partial(decode_first_stage, self.first_stage)
        return decode_windows(decode, z, labels if spade else None, self.label_nc, self.latent_factor, window, overlap)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
        """Quantise and decode latents z (B, E, d, h, w); the SPADE decoder also gets seg (B, K, D, H, W).

        Returns:
            (B, 1, D, H, W) in [-1, 1].
        """
        return decode_first_stage(self.first_stage, z, seg)

    @torch.no_grad()
    def sample(
        self,
        seg: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        eta: float | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Generate images for one-hot label maps (whole latent at once; :mod:`diffusion.sampling` does the work).

        Args:
            seg: (B, K, D, H, W) one-hot label maps at image resolution; D, H, W divisible by :attr:`latent_factor`.
            sampler: "ddpm" (ancestral, all T steps), "ddim" or "rflow"; default ``hparams.sampler``.
            steps: network evaluations per sample; default ``hparams.sample_steps`` (ddpm: T).
            guidance: w of ``u + w·(c − u)``; 1 conditional only, 0 unconditional; default ``hparams.guidance``.
            generator: RNG on the model's device; the same seed gives the same volumes.
            progress: show a progress bar over the steps.
            eta: DDIM η; default ``hparams.ddim_eta``.
            use_ema: sample with the EMA weights (default) or the training weights.

        Returns:
            (B, 1, D, H, W) images in [-1, 1].
        """
        return self._sample(seg, sampler, steps, guidance, generator, progress, eta, use_ema, latents=False)


def load_checkpoint(ckpt: str | Path, device: torch.device | str = "cpu", **overrides: Any) -> LatentDiffusionModule:
    """Load a diffusion checkpoint for sampling, treating it as untrusted data.

    The file is read with ``weights_only=True``; its hyperparameters must be exactly constructor arguments of
    :class:`LatentDiffusionModule` and contain no ``_target_`` (or other call key) anywhere, so nothing in the file
    names code to import or call. The model is then built by this class (not by Lightning's loader or Hydra) and
    the weights loaded strictly. A stage-1 or foreign checkpoint is refused before anything is built.

    Args:
        ckpt: ``.ckpt`` file from ``train/train_diffusion.py``.
        device: where the model goes.
        overrides: constructor arguments that replace the stored ones (e.g. ``compile=False``, a choice of the run).

    Returns:
        The model in eval mode on ``device``.

    Raises:
        DataError: missing, unreadable, stage-1 or foreign checkpoint, unknown or call-naming hyperparameters.
    """
    import inspect

    from dataset.contract import DataError
    from dataset.files import read_checkpoint
    from dataset.registry import find_targets

    path = Path(ckpt)
    data = read_checkpoint(path)  # mmap: the tensors are read lazily, when the state dict is copied into the model
    hparams = data.get("hyper_parameters") if isinstance(data, dict) else None
    if not isinstance(hparams, dict) or "first_stage_hparams" not in hparams:
        stage = "a stage-1 (VQ-GAN) checkpoint" if isinstance(hparams, dict) and "n_codes" in hparams else (
            "not a Med-LSDM diffusion checkpoint")  # fmt: skip
        raise DataError(f"{path}: {stage}; generation needs the stage-2 checkpoint from train/train_diffusion.py")
    targets = find_targets(hparams)
    if targets:
        raise DataError(f"{path}: hyper_parameters.{targets[0]} names code to call; refusing this checkpoint")
    allowed = set(inspect.signature(LatentDiffusionModule.__init__).parameters) - {"self"}
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise DataError(f"{path}: unknown hyperparameter(s) {unknown}; not a checkpoint of this code")
    if not isinstance(data.get("state_dict"), dict):
        raise DataError(f"{path}: the checkpoint has no state_dict")
    try:
        model = LatentDiffusionModule(**{**hparams, "first_stage_ckpt": None, **overrides})
        model.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise DataError(f"{path}: cannot rebuild the model from this checkpoint ({err})") from None
    return model.eval().to(device)
