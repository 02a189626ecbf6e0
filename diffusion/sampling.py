"""The one sampling path of stage 2: noise, sampler defaults, guidance, EMA choice, windows, denormalisation, decoding.

Two layers:

* :func:`sample_latent` is generic: a denoiser callable ``denoise(x, t)``, a latent shape, a
  :class:`~diffusion.schedulers.NoiseSchedule` and one generator per item. It knows nothing about label maps, so
  other latent diffusions (unconditional, attribute-conditioned) reuse it as is.
* :func:`sample_images` is the label-map-conditioned client of it that both :meth:`LatentDiffusionModule.sample
  <diffusion.module.LatentDiffusionModule.sample>` (validation, montages) and the generation pipeline
  (``scripts/generate.py``) call: it resolves the model's sampler defaults (:func:`resolve_sampler`), builds a
  :class:`WindowedGuidedDenoiser` over the latent, runs :func:`sample_latent`, de-normalises and decodes
  (:func:`decode_latents`).

Windows (MultiDiffusion, Bar-Tal et al. 2023, https://arxiv.org/abs/2302.08113): at every step the denoiser runs on
overlapping latent windows and the predictions are blended (:mod:`diffusion.generation.tiling`) before one scheduler
step on the whole latent. Which window: :func:`denoise_window`. The pseudo-3D U-Net is convolutional in-plane (its
attention there has no position term), so in-plane a window can be as large as the latent; along depth its T5
relative position bias has only been trained on distances below the training depth, so windows along depth never
exceed it. Hence by default one window spans the whole plane and windows overlap only along depth.

Step-invariant work is done once per window, not per step: each window's label map is one-hot encoded from the
integer map (so memory grows with the window, not with volume x classes), run through the label encoder once (for
the conditional and the null branch, concatenated once), and, within :func:`spade_cache`, every SPADE scale and
shift is computed once per window and reused at every step (bit-identical output).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dataset.contract import one_hot
from diffusion.generation.tiling import blend_weight, windows
from diffusion.guidance import GuidedDenoiser
from diffusion.schedulers import DenoiseFn, NoiseSchedule

if TYPE_CHECKING:
    from diffusion.label_diffusion import LabelLatentDiffusion
    from diffusion.module import LatentDiffusionModule

log = logging.getLogger(__name__)

#: Largest in-plane window (latent voxels per slice, h x w) denoised at once by default; larger planes are tiled with
#: the training window. 128 x 128 latent voxels is a 512 x 512 slice at the paper's in-plane factor 4.
DEFAULT_MAX_PLANE = 128 * 128
WINDOW_MODES = ("auto", "block")


@dataclass(frozen=True)
class SamplerSettings:
    """A fully resolved sampling run: nothing left to default.

    Attributes:
        sampler: "ddpm", "ddim" or "rflow".
        steps: network evaluations per sample (None only for "ddpm": all T).
        guidance: w of ``u + w·(c − u)``.
        eta: DDIM η.
        use_ema: sample with the EMA weights.
    """

    sampler: str
    steps: int | None
    guidance: float
    eta: float
    use_ema: bool = True

    def record(self) -> dict[str, object]:
        """Plain-data form for run records."""
        return {"sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "eta": self.eta,
                "ema": self.use_ema}  # fmt: skip


def resolve_sampler(
    model: LatentDiffusionModule | LabelLatentDiffusion,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    eta: float | None = None,
    use_ema: bool = True,
) -> SamplerSettings:
    """Fill unset sampling options from the model's hyperparameters (the only place these defaults live).

    Raises:
        ValueError: a sampler that does not fit the model's objective, steps < 1, guidance or eta < 0.
    """
    hp = model.hparams
    sampler = sampler or hp.sampler
    if sampler not in model.schedule.samplers:
        raise ValueError(f"sampler {sampler!r} does not fit this model; use one of {model.schedule.samplers}")
    if steps is None and sampler != "ddpm":
        steps = hp.sample_steps
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    guidance = float(hp.guidance if guidance is None else guidance)
    eta = float(hp.ddim_eta if eta is None else eta)
    if guidance < 0 or eta < 0:
        raise ValueError(f"guidance and eta must be >= 0, got {guidance}, {eta}")
    return SamplerSettings(sampler, steps, guidance, eta, use_ema)


def sample_latent(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    sampler: str,
    steps: int | None = None,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Generic sampling loop: noise from one generator per item, then the scheduler's sampler.

    Item i's starting noise comes from ``generators[i]`` alone, so deterministic samplers (DDIM with η = 0,
    rectified flow) give each item the same latent whatever else is in the batch; stochastic samplers (ancestral
    DDPM, DDIM η > 0) also draw per-step noise, from ``generators[0]``.

    Args:
        denoise: ``denoise(x (B, C, d, h, w), t (B,)) -> model output`` with any conditioning and guidance folded in.
        schedule: the model's noise schedule.
        shape: (C, d, h, w) of one latent.
        generators: B generators on ``device``.
        sampler, steps, eta: see :meth:`NoiseSchedule.sample`.
        device: where the latent lives.
        progress: progress bar over the steps.

    Returns:
        (B, C, d, h, w) float32 latent in the diffusion's (normalised) space.
    """
    if not generators:
        raise ValueError("need at least one generator")
    device = torch.device(device)
    for g in generators:
        if g.device.type != device.type:
            raise ValueError(f"generator is on {g.device}, the sampling runs on {device}: create it there")
    noise = initial_noise(shape, generators, device)
    return schedule.sample(denoise, noise, sampler, steps, eta, generators[0], progress)


def initial_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The sampling loop's starting point: (B, *shape) standard normal noise, item i from ``generators[i]`` alone.

    The one place this draw happens, so a caller that needs the noise a sampling run started from (the reflow pairs
    of :mod:`diffusion.distill`) re-draws it from generators seeded the same way and gets the same tensor.
    """
    return torch.cat([torch.randn((1, *shape), device=device, generator=g) for g in generators])


# ---------------------------------------------------------------------------------------------------- label windows
def _image_slices(win: tuple[slice, ...], factor: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s.start * f, s.stop * f) for s, f in zip(win, factor))


def window_seg(labels: torch.Tensor, label_nc: int, win: tuple[slice, ...] | None = None) -> torch.Tensor:
    """One-hot label map of one image window, made from the integer map (or cut from a one-hot map).

    Args:
        labels: (B, D, H, W) integer label maps, or (B, K, D, H, W) one-hot maps.
        label_nc: K.
        win: (D, H, W) image slices; None for the whole map.

    Returns:
        (B, K, d, h, w) float32 one-hot window.
    """
    idx = (slice(None),) * (labels.dim() - 3) + tuple(win or (slice(None),) * 3)
    if labels.dim() == 5:
        if labels.shape[1] != label_nc:
            raise ValueError(f"one-hot labels must have {label_nc} channels, got {tuple(labels.shape)}")
        return labels[idx].float()
    if labels.dim() != 4:
        raise ValueError(f"labels must be (B, D, H, W) integer or (B, K, D, H, W) one-hot, got {tuple(labels.shape)}")
    return one_hot(labels[idx][:, None], label_nc)


def denoise_window(
    latent_shape: Sequence[int],
    train_window: Sequence[int],
    mode: str = "auto",
    max_plane: int = DEFAULT_MAX_PLANE,
    multiple: Sequence[int] = (1, 1, 1),
) -> tuple[int, int, int]:
    """The latent window (d, h, w) the denoiser runs on.

    ``"block"``: the training window on every axis. ``"auto"``: the training depth, and the whole plane when the
    latent's plane has at most ``max_plane`` voxels (else the training window in-plane too), rounded down to the
    network's ``multiple`` (:attr:`Denoiser.size_multiple <diffusion.denoiser.Denoiser.size_multiple>`; pad the
    map to such multiples to get one window in-plane). See the module docstring for why depth is never widened.
    """
    if mode not in WINDOW_MODES:
        raise ValueError(f"window mode must be one of {WINDOW_MODES}, got {mode!r}")
    d, h, w = (int(s) for s in latent_shape)
    wd, wh, ww = (min(int(a), b) for a, b in zip(train_window, (d, h, w)))
    if mode == "auto" and h * w <= max_plane:
        _, mh, mw = (int(m) for m in multiple)
        return wd, max(wh, h // mh * mh), max(ww, w // mw * mw)
    return wd, wh, ww


class WindowedGuidedDenoiser:
    """``denoise(x, t)`` over a whole latent as a blend of guided window predictions (one window: no blending).

    Everything that depends only on the label map is done here, once: each window's one-hot map is made from the
    integer map and encoded (conditional and null branch) by a :class:`~diffusion.guidance.GuidedDenoiser`; the
    one-hot maps are dropped afterwards.

    Args:
        denoiser: the (EMA) denoiser network.
        labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps of whole volumes (image resolution).
        label_nc: K.
        guidance: CFG weight w.
        latent_window: (d, h, w) window in latent voxels (clipped to the latent).
        latent_factor: image voxels per latent voxel along (D, H, W).
        overlap: fraction of a window shared by neighbours.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        labels: torch.Tensor,
        label_nc: int,
        guidance: float,
        latent_window: Sequence[int],
        latent_factor: Sequence[int],
        overlap: float,
    ) -> None:
        spatial = labels.shape[-3:]
        if any(s % f for s, f in zip(spatial, latent_factor)):
            raise ValueError(f"label map size {tuple(spatial)} is not divisible by {tuple(latent_factor)}")
        latent_shape = tuple(s // f for s, f in zip(spatial, latent_factor))
        self.windows = windows(latent_shape, tuple(latent_window), overlap)  # type: ignore[arg-type]
        self.parts = [
            GuidedDenoiser(denoiser, window_seg(labels, label_nc, _image_slices(w, latent_factor)), guidance)
            for w in self.windows
        ]
        shape = tuple(s.stop - s.start for s in self.windows[0])
        self.weight = blend_weight(shape).to(labels.device)  # all windows have the same (clipped) shape
        self.norm = torch.zeros(latent_shape, device=labels.device)
        for w in self.windows:
            self.norm[w] += self.weight

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, d, h, w) whole latents, t: (B,) → blended model output (B, C, d, h, w)."""
        if len(self.parts) == 1:
            return self.parts[0](x, t)
        out = torch.zeros_like(x, dtype=torch.float32)
        for w, part in zip(self.windows, self.parts):
            idx = (slice(None), slice(None), *w)
            out[idx] += part(x[idx], t).float() * self.weight
        return out / self.norm


@contextlib.contextmanager
def spade_cache(denoiser: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Cache every SPADE scale and shift of ``denoiser`` per label-feature tensor while sampling.

    The label features of each window are fixed tensors for the whole run (:class:`WindowedGuidedDenoiser`), so
    the cache computes each SPADE's gamma/beta once per window instead of once per step; the result is bit-identical.
    Uses :func:`vq_gan_3d.spade.modulation_cache` when the installed ``vq_gan_3d`` has it, else does nothing.
    """
    from vq_gan_3d import spade

    cache = getattr(spade, "modulation_cache", None)
    if not enabled or cache is None:
        yield
        return
    with cache(denoiser):
        yield


def spade_cache_bytes(denoiser: nn.Module, latent_numel: int, batch: int) -> int:
    """Rough size of the SPADE cache for ``latent_numel`` latent voxels (both guidance branches, float32)."""
    from vq_gan_3d.spade import SPADE

    total = 0
    for m in denoiser.modules():
        if isinstance(m, SPADE):
            total += 2 * m.norm.num_channels  # gamma and beta at that block's resolution (upper bound: latent res)
    return 4 * 2 * batch * total * latent_numel


# ---------------------------------------------------------------------------------------------------------- decoding
def decode_latents(
    model: LatentDiffusionModule,
    z: torch.Tensor,
    labels: torch.Tensor,
    latent_window: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> torch.Tensor:
    """Quantise and decode latents z (B, E, d, h, w), whole or in gaussian-blended windows.

    Windows use MONAI's ``sliding_window_inference``; the label map travels as its ``condition``: the integer map
    is folded onto the latent grid (each latent voxel carries its fd·fh·fw image labels as channels), so MONAI's
    window slicing of the condition cuts exactly the image window that belongs to the latent window, and the
    one-hot map of that window alone is made inside the predictor.

    Args:
        model: the diffusion model (its first stage decodes).
        z: de-normalised latents of whole volumes.
        labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps (used by a SPADE decoder).
        latent_window: window in latent voxels; None or a window covering ``z`` decodes at once.
        overlap: fraction of a window shared by neighbours.

    Returns:
        (B, 1, D, H, W) images in [-1, 1].
    """
    factor = tuple(model.latent_factor)
    # the normal decoder never sees labels: no one-hot at all; stand-ins without a first stage get labels
    spade = getattr(getattr(model, "first_stage", None), "decoder_type", "spade") == "spade"
    if latent_window is None or all(w >= s for w, s in zip(latent_window, z.shape[2:])):
        return model.decode_latents(z, window_seg(labels, model.label_nc) if spade else None)
    from monai.inferers import sliding_window_inference

    if labels.dim() == 5:  # one-hot in: fold the class index, not K channels
        labels = labels.argmax(1)
    b, (fd, fh, fw) = z.shape[0], factor
    d, h, w = z.shape[2:]
    folded = labels.reshape(b, d, fd, h, fh, w, fw).permute(0, 2, 4, 6, 1, 3, 5).reshape(b, fd * fh * fw, d, h, w)

    def predictor(zw: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        n, _, wd, wh, ww = condition.shape
        lab = condition.reshape(n, fd, fh, fw, wd, wh, ww).permute(0, 4, 1, 5, 2, 6, 3)
        lab = lab.reshape(n, wd * fd, wh * fh, ww * fw).long()
        return model.decode_latents(zw, window_seg(lab, model.label_nc) if spade else None).float()

    window = tuple(min(int(a), s) for a, s in zip(latent_window, z.shape[2:]))
    out = sliding_window_inference(
        z, window, 1, predictor, overlap=overlap, mode="gaussian", condition=folded.to(z.dtype)
    )
    return out.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_images(
    model: LatentDiffusionModule,
    labels: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings,
    *,
    train_window: Sequence[int] | None = None,
    window_mode: str = "auto",
    overlap: float = 0.5,
    max_plane: int = DEFAULT_MAX_PLANE,
    cache: bool = True,
    progress: bool = False,
    return_latents: bool = False,
) -> torch.Tensor:
    """Generate images for label maps of one shape (whole latent or windows; see the module docstring).

    Args:
        model: trained diffusion model (its device is used).
        labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps; D, H, W multiples of the latent factor.
        generators: B generators on the model's device.
        settings: :func:`resolve_sampler` output.
        train_window: training block (D, H, W) in image voxels; None treats the whole map as one block.
        window_mode: "auto" (whole plane, training depth) or "block" (training window on every axis).
        overlap: window overlap along tiled axes, denoising and decoding.
        max_plane: in-plane latent voxels above which "auto" tiles in-plane too.
        cache: cache SPADE scales and shifts per window across steps.
        progress: progress bar over the steps.
        return_latents: return the de-normalised latents (B, E, d, h, w) instead of decoding.

    Returns:
        (B, 1, D, H, W) images in [-1, 1] (or latents, see ``return_latents``).
    """
    if not model.latent_norm.is_fitted:
        raise RuntimeError("latent statistics are not set: train this model (or load a trained checkpoint) first")
    if len(generators) != labels.shape[0]:
        raise ValueError(f"need one generator per label map: {len(generators)} for a batch of {labels.shape[0]}")
    factor = tuple(model.latent_factor)
    spatial = tuple(labels.shape[-3:])
    if labels.dim() == 5:
        model.check_seg(labels)
    elif any(s % f for s, f in zip(spatial, factor)):
        raise ValueError(f"label map size {spatial} is not divisible by {factor}")
    latent_shape = tuple(s // f for s, f in zip(spatial, factor))
    block = tuple(train_window) if train_window is not None else spatial
    if any(s < b for s, b in zip(spatial, block)):
        raise ValueError(f"label map {spatial} is smaller than the block {block}: pad it first")
    train_latent = tuple(b // f for b, f in zip(block, factor))
    net = model.ema.module if settings.use_ema else model.denoiser
    window = denoise_window(latent_shape, train_latent, window_mode, max_plane, net.size_multiple)
    labels = labels.to(model.device)
    denoise = WindowedGuidedDenoiser(net, labels, model.label_nc, settings.guidance, window, factor, overlap)
    batch = labels.shape[0] * (2 if 0.0 < settings.guidance != 1.0 else 1)
    cached_numel = len(denoise.windows) * math.prod(s.stop - s.start for s in denoise.windows[0])
    fits = spade_cache_bytes(net, cached_numel, batch) <= _cache_budget(model.device)
    if cache and not fits:
        log.info("SPADE cache off: it would exceed the memory budget for %d window(s)", len(denoise.windows))
    shape = (model.first_stage.embedding_dim, *latent_shape)
    with spade_cache(net, enabled=cache and fits):
        z = sample_latent(denoise, model.schedule, shape, generators, settings.sampler, settings.steps, settings.eta,
                          model.device, progress)  # fmt: skip
    z = model.latent_norm.denormalize(z)
    if return_latents:
        return z
    # the VQ-GAN decoder is convolutional: it decodes the same windows (whole planes by default)
    return decode_latents(model, z, labels, window, overlap)


def _cache_budget(device: torch.device) -> int:
    """Bytes the SPADE cache may take: a quarter of the free accelerator memory, or 4 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return 4 * 2**30
