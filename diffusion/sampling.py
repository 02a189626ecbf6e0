"""The one sampling path of the latent diffusions: sampler settings, the loop, windows and their blending, guidance,
the SPADE cache. Model-agnostic: it takes networks, a schedule and tensors, never a LightningModule.

* :func:`sample_latent` is the generic loop: a denoiser callable ``denoise(x, t)``, a latent shape, a
  :class:`~diffusion.schedulers.NoiseSchedule` and one generator per item. It knows nothing about label maps, so
  every latent diffusion (label-map conditioned, attribute conditioned) runs it.
* :func:`sample_windows` is the label-map-conditioned loop over a whole latent: a :class:`WindowedGuidedDenoiser`
  over windows chosen by :func:`latent_window`, inside :func:`spade_cache`; :func:`decode_windows` decodes the
  same windows with the caller's decoder. Each model owns its sampler defaults (:class:`SamplerDefaults`), its
  latent statistics and its decoder, and calls these (``LatentDiffusionModule.sample_images``).

Windows (MultiDiffusion, Bar-Tal et al. 2023, https://arxiv.org/abs/2302.08113): at every step the denoiser runs on
overlapping latent windows and the predictions are averaged with smooth weights (:func:`blend_weight`) before one
scheduler step on the whole latent; every window sees the same noisy latent, so the windows agree with each other
instead of being stitched afterwards. Which window: :func:`denoise_window`. The pseudo-3D U-Net is convolutional
in-plane (its attention there has no position term), so in-plane a window can be as large as the latent; along
depth its T5 relative position bias has only been trained on distances below the training depth, so windows along
depth never exceed it. Hence by default one window spans the whole plane and windows overlap only along depth.

Step-invariant work is done once per window, not per step: each window's label map is one-hot encoded from the
integer map (so memory grows with the window, not with volume x classes), run through the label encoder once (for
the conditional and the null branch, concatenated once), and, within :func:`spade_cache`, every SPADE scale and
shift is computed once per window and reused at every step (bit-identical output).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dataset.contract import one_hot
from diffusion.guidance import GuidedDenoiser
from diffusion.schedulers import DenoiseFn, NoiseSchedule, StepHook
from vq_gan_3d.spade import SPADE, modulation_cache

log = logging.getLogger(__name__)

#: Largest in-plane window (latent voxels per slice, h x w) denoised at once by default; larger planes are tiled with
#: the training window. 128 x 128 latent voxels is a 512 x 512 slice at the paper's in-plane factor 4.
DEFAULT_MAX_PLANE = 128 * 128
WINDOW_MODES = ("auto", "block")

#: ``decode(z (B, E, d, h, w), seg (B, K, D, H, W) one-hot or None) -> (B, 1, D, H, W)``: a model's latent decoder.
LatentDecoder = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# ---------------------------------------------------------------------------------------------- sampler settings
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


@dataclass(frozen=True)
class SamplerDefaults:
    """A model's default sampling options (from its hyperparameters) and the samplers its objective allows.

    Attributes:
        sampler: default sampler.
        steps: default steps of the ddim/rflow samplers (ddpm always runs T).
        guidance: default w of ``u + w·(c − u)``.
        eta: default DDIM η.
        samplers: the samplers that fit the model's objective (:attr:`NoiseSchedule.samplers`).
    """

    sampler: str
    steps: int
    guidance: float
    eta: float
    samplers: tuple[str, ...]

    def resolve(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float | None = None,
        use_ema: bool = True,
    ) -> SamplerSettings:
        """Fill unset sampling options from these defaults.

        Raises:
            ValueError: a sampler that does not fit the model's objective, steps < 1, guidance or eta < 0.
        """
        sampler = sampler or self.sampler
        if sampler not in self.samplers:
            raise ValueError(f"sampler {sampler!r} does not fit this model; use one of {self.samplers}")
        if steps is None and sampler != "ddpm":
            steps = self.steps
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        guidance = float(self.guidance if guidance is None else guidance)
        eta = float(self.eta if eta is None else eta)
        if guidance < 0 or eta < 0:
            raise ValueError(f"guidance and eta must be >= 0, got {guidance}, {eta}")
        return SamplerSettings(sampler, steps, guidance, eta, use_ema)


# ------------------------------------------------------------------------------------------------------- the loop
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
    step_hook: StepHook | None = None,
    resample: tuple[int, int] | None = None,
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
        step_hook: ``hook(x, t) -> x`` on the latent before every step and at the end
            (:data:`~diffusion.schedulers.StepHook`; RePaint-style editing imposes known voxels with it).
        resample: RePaint's resampling jumps (jump length, count); see :meth:`NoiseSchedule.sample`.

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
    return schedule.sample(
        denoise, noise, sampler, steps, eta, generators[0], progress, step_hook=step_hook, resample=resample
    )


def initial_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The sampling loop's starting point: (B, *shape) standard normal noise, item i from ``generators[i]`` alone.

    The one place this draw happens, so a caller that needs the noise a sampling run started from (the reflow pairs
    of :mod:`diffusion.distill`) re-draws it from generators seeded the same way and gets the same tensor.
    """
    return torch.cat([torch.randn((1, *shape), device=device, generator=g) for g in generators])


# -------------------------------------------------------------------------------------------- windows and blending
def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``window`` covering ``[0, size)`` with at least ``overlap`` overlap.

    The last window is aligned to the end, so every index is covered and no window leaves the volume.

    Args:
        size: axis length (>= 1).
        window: window length; windows longer than the axis are clipped to it.
        overlap: fraction of ``window`` shared by neighbours, in [0, 1).
    """
    if size < 1 or window < 1:
        raise ValueError(f"size and window must be >= 1, got {size}, {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    window = min(window, size)
    if window == size:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / stride) + 1
    starts = [min(i * stride, size - window) for i in range(n)]
    return sorted(set(starts))


def windows(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float) -> list[tuple[slice, ...]]:
    """All 3-D windows (as slice triples over (d, h, w)) tiling ``shape``; see :func:`window_starts`."""
    axes = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
    win = [min(w, s) for s, w in zip(shape, window)]
    return [
        (slice(a, a + win[0]), slice(b, b + win[1]), slice(c, c + win[2]))
        for a in axes[0]
        for b in axes[1]
        for c in axes[2]
    ]


def blend_weight(window: tuple[int, int, int], border: float = 0.25) -> torch.Tensor:
    """Separable weight (d, h, w) in (0, 1]: 1 in the middle, falling linearly over ``border`` of each side.

    Never exactly 0, so a voxel covered by a single window keeps its value after normalisation.
    """
    parts = []
    for n in window:
        ramp = max(1, int(round(n * border)))
        idx = torch.arange(n, dtype=torch.float32)
        dist = torch.minimum(idx + 1, n - idx)  # 1 at the edges, growing inwards
        parts.append(torch.clamp(dist / ramp, max=1.0))
    return parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :]


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
    network's ``multiple`` (:attr:`Denoiser.size_multiple <diffusion.denoiser_base.Denoiser.size_multiple>`; pad the
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


def latent_window(
    image_shape: Sequence[int],
    latent_factor: Sequence[int],
    train_window: Sequence[int] | None,
    mode: str = "auto",
    max_plane: int = DEFAULT_MAX_PLANE,
    multiple: Sequence[int] = (1, 1, 1),
) -> tuple[int, int, int]:
    """Check a label map's (D, H, W) against the latent factor and the training block; its :func:`denoise_window`.

    Args:
        image_shape: (D, H, W) of the label maps, multiples of ``latent_factor``.
        latent_factor: image voxels per latent voxel along (D, H, W).
        train_window: training block (D, H, W) in image voxels; None treats the whole map as one block.
        mode, max_plane, multiple: see :func:`denoise_window`.

    Raises:
        ValueError: a size not divisible by the latent factor, or a map smaller than the block.
    """
    spatial, factor = tuple(int(s) for s in image_shape), tuple(int(f) for f in latent_factor)
    if any(s % f for s, f in zip(spatial, factor)):
        raise ValueError(f"label map size {spatial} is not divisible by {factor}")
    latent_shape = tuple(s // f for s, f in zip(spatial, factor))
    block = tuple(train_window) if train_window is not None else spatial
    if any(s < b for s, b in zip(spatial, block)):
        raise ValueError(f"label map {spatial} is smaller than the block {block}: pad it first")
    train_latent = tuple(b // f for b, f in zip(block, factor))
    return denoise_window(latent_shape, train_latent, mode, max_plane, multiple)


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
        extra: (B, E, d, h, w) fixed inputs over the whole latent, concatenated to each window's latent (a denoiser
            with ``extra_channels``, e.g. ``inpaint_inputs``); None: none.
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
        extra: torch.Tensor | None = None,
    ) -> None:
        spatial = labels.shape[-3:]
        if any(s % f for s, f in zip(spatial, latent_factor)):
            raise ValueError(f"label map size {tuple(spatial)} is not divisible by {tuple(latent_factor)}")
        latent_shape = tuple(s // f for s, f in zip(spatial, latent_factor))
        if extra is not None and (extra.dim() != 5 or tuple(extra.shape[2:]) != latent_shape):
            raise ValueError(f"extra inputs {tuple(extra.shape)} do not fit the latent grid {latent_shape}")
        self.extra = extra
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
            return self.parts[0](self._input(x, None), t)
        out = torch.zeros_like(x, dtype=torch.float32)
        for w, part in zip(self.windows, self.parts):
            idx = (slice(None), slice(None), *w)
            out[idx] += part(self._input(x[idx], idx), t).float() * self.weight
        return out / self.norm

    def _input(self, x: torch.Tensor, idx: tuple[slice, ...] | None) -> torch.Tensor:
        """The network input of one window: its latent, then its part of the extra inputs (if any)."""
        if self.extra is None:
            return x
        extra = self.extra if idx is None else self.extra[idx]
        return torch.cat((x, extra.to(x.dtype)), dim=1)


# ------------------------------------------------------------------------------------------------- the SPADE cache
@contextlib.contextmanager
def spade_cache(denoiser: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Cache every SPADE scale and shift of ``denoiser`` per label-feature tensor while sampling.

    The label features of each window are fixed tensors for the whole run (:class:`WindowedGuidedDenoiser`), so
    the cache (:func:`vq_gan_3d.spade.modulation_cache`) computes each SPADE's gamma/beta once per window instead
    of once per step; the result is bit-identical.
    """
    if not enabled:
        yield
        return
    with modulation_cache(denoiser):
        yield


def spade_cache_bytes(denoiser: nn.Module, latent_numel: int, batch: int) -> int:
    """Rough size of the SPADE cache for ``latent_numel`` latent voxels (both guidance branches, float32)."""
    total = 0
    for m in denoiser.modules():
        if isinstance(m, SPADE):
            total += 2 * m.norm.num_channels  # gamma and beta at that block's resolution (upper bound: latent res)
    return 4 * 2 * batch * total * latent_numel


def _cache_budget(device: torch.device) -> int:
    """Bytes the SPADE cache may take: a quarter of the free accelerator memory, or 4 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return 4 * 2**30


# ------------------------------------------------------------------------------------------ label-map conditioning
@torch.no_grad()
def sample_windows(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    labels: torch.Tensor,
    label_nc: int,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings,
    latent_channels: int,
    latent_factor: Sequence[int],
    window: Sequence[int],
    overlap: float,
    progress: bool = False,
    step_hook: StepHook | None = None,
    extra: torch.Tensor | None = None,
    resample: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Sample normalised latents for label maps, denoising guided windows with the SPADE cache where it fits.

    Args:
        denoiser: the network to sample with (EMA or training weights: the caller's choice).
        schedule: the model's noise schedule.
        labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps on the sampling device.
        label_nc: K.
        generators: B generators on that device.
        settings: sampler, steps, guidance and η (:meth:`SamplerDefaults.resolve`).
        latent_channels: E.
        latent_factor: image voxels per latent voxel along (D, H, W).
        window: latent window (d, h, w) (:func:`latent_window`).
        overlap: window overlap along tiled axes.
        progress: progress bar over the steps.
        step_hook, resample: see :func:`sample_latent`.
        extra: (B, X, D/fd, H/fh, W/fw) fixed extra inputs of the denoiser (see :class:`WindowedGuidedDenoiser`).

    Returns:
        (B, E, D/fd, H/fh, W/fw) float32 latents in the diffusion's (normalised) space.
    """
    if len(generators) != labels.shape[0]:
        raise ValueError(f"need one generator per label map: {len(generators)} for a batch of {labels.shape[0]}")
    factor = tuple(latent_factor)
    latent_shape = tuple(s // f for s, f in zip(labels.shape[-3:], factor))
    denoise = WindowedGuidedDenoiser(denoiser, labels, label_nc, settings.guidance, window, factor, overlap, extra)
    batch = labels.shape[0] * (2 if 0.0 < settings.guidance != 1.0 else 1)
    cached_numel = len(denoise.windows) * math.prod(s.stop - s.start for s in denoise.windows[0])
    fits = spade_cache_bytes(denoiser, cached_numel, batch) <= _cache_budget(labels.device)
    if not fits:
        log.info("SPADE cache off: it would exceed the memory budget for %d window(s)", len(denoise.windows))
    with spade_cache(denoiser, enabled=fits):
        return sample_latent(denoise, schedule, (latent_channels, *latent_shape), generators, settings.sampler,
                             settings.steps, settings.eta, labels.device, progress, step_hook, resample)  # fmt: skip


@torch.no_grad()
def decode_windows(
    decode: LatentDecoder,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    label_nc: int,
    latent_factor: Sequence[int],
    latent_window: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> torch.Tensor:
    """Decode latents z (B, E, d, h, w) with ``decode``, whole or in gaussian-blended windows.

    Windows use MONAI's ``sliding_window_inference``; the label map travels as its ``condition``: the integer map
    is folded onto the latent grid (each latent voxel carries its fd·fh·fw image labels as channels), so MONAI's
    window slicing of the condition cuts exactly the image window that belongs to the latent window, and the
    one-hot map of that window alone is made inside the predictor.

    Args:
        decode: the model's latent decoder.
        z: de-normalised latents of whole volumes.
        labels: (B, D, H, W) integer or (B, K, D, H, W) one-hot label maps for a decoder that takes them (SPADE);
            None for one that does not (no one-hot map is made at all).
        label_nc: K.
        latent_factor: image voxels per latent voxel along (D, H, W).
        latent_window: window in latent voxels; None or a window covering ``z`` decodes at once.
        overlap: fraction of a window shared by neighbours.

    Returns:
        (B, 1, D, H, W) images in [-1, 1].
    """
    if latent_window is None or all(w >= s for w, s in zip(latent_window, z.shape[2:])):
        return decode(z, window_seg(labels, label_nc) if labels is not None else None)
    from monai.inferers import sliding_window_inference

    b, (fd, fh, fw) = z.shape[0], tuple(latent_factor)
    d, h, w = z.shape[2:]
    folded = None
    if labels is not None:
        if labels.dim() == 5:  # one-hot in: fold the class index, not K channels
            labels = labels.argmax(1)
        folded = labels.reshape(b, d, fd, h, fh, w, fw).permute(0, 2, 4, 6, 1, 3, 5).reshape(b, fd * fh * fw, d, h, w)

    def predictor(zw: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is None:
            return decode(zw, None).float()
        n, _, wd, wh, ww = condition.shape
        lab = condition.reshape(n, fd, fh, fw, wd, wh, ww).permute(0, 4, 1, 5, 2, 6, 3)
        lab = lab.reshape(n, wd * fd, wh * fh, ww * fw).long()
        return decode(zw, window_seg(lab, label_nc)).float()

    window = tuple(min(int(a), s) for a, s in zip(latent_window, z.shape[2:]))
    condition = {"condition": folded.to(z.dtype)} if folded is not None else {}
    out = sliding_window_inference(z, window, 1, predictor, overlap=overlap, mode="gaussian", **condition)
    return out.clamp(-1, 1)
