"""Sampling and decoding of label maps of any size with a model trained on fixed blocks.

Denoising: MultiDiffusion (see :mod:`diffusion.generation.tiling`): one latent for the whole volume; at each step
the guided denoiser runs on overlapping training-size windows and the outputs are blended, then the scheduler takes
one step on the whole latent. Decoding: the first stage decodes overlapping latent windows (the SPADE decoder with
the matching label crop) and the images are blended with the same kind of weights.
"""

from __future__ import annotations

import torch

from diffusion.generation.tiling import blend_weight, windows
from diffusion.guidance import GuidedDenoiser


def _image_slices(win: tuple[slice, ...], factor: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(slice(s.start * f, s.stop * f) for s, f in zip(win, factor))


class WindowedDenoiser:
    """``denoise(x, t)`` over a latent larger than the training block, as a blend of window predictions.

    Args:
        denoiser: the (EMA) denoiser network.
        seg: (B, K, D, H, W) one-hot label maps of whole volumes.
        guidance: CFG weight w.
        latent_window: (d, h, w) window in latent voxels (the training block / latent factor).
        latent_factor: image voxels per latent voxel along (D, H, W).
        overlap: fraction of a window shared by neighbours.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        seg: torch.Tensor,
        guidance: float,
        latent_window: tuple[int, int, int],
        latent_factor: tuple[int, int, int],
        overlap: float,
    ) -> None:
        latent_shape = tuple(s // f for s, f in zip(seg.shape[2:], latent_factor))
        self.windows = windows(latent_shape, latent_window, overlap)  # type: ignore[arg-type]
        # One guided denoiser per window: each encodes its label crop once, not at every step.
        self.parts = [
            GuidedDenoiser(denoiser, seg[(slice(None), slice(None), *_image_slices(w, latent_factor))], guidance)
            for w in self.windows
        ]
        shape = tuple(s.stop - s.start for s in self.windows[0])
        self.weight = blend_weight(shape).to(seg.device)  # all windows have the same (clipped) shape
        self.norm = torch.zeros(latent_shape, device=seg.device)
        for w in self.windows:
            self.norm[w] += self.weight

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, d, h, w) whole latents, t: (B,) → blended model output (B, C, d, h, w)."""
        if len(self.parts) == 1:
            return self.parts[0](x, t)
        out = torch.zeros_like(x)
        for w, part in zip(self.windows, self.parts):
            idx = (slice(None), slice(None), *w)
            out[idx] += part(x[idx], t).float() * self.weight
        return out / self.norm


@torch.no_grad()
def decode_windows(
    model: torch.nn.Module,
    z: torch.Tensor,
    seg: torch.Tensor,
    latent_window: tuple[int, int, int],
    overlap: float,
) -> torch.Tensor:
    """Decode latents (B, E, d, h, w) window by window and blend the images.

    Args:
        model: a :class:`~diffusion.module.LatentDiffusionModule` (for ``decode_latents`` and ``latent_factor``).
        z: de-normalised latents of whole volumes.
        seg: (B, K, D, H, W) one-hot label maps (used by a SPADE decoder).
        latent_window: window in latent voxels.
        overlap: fraction of a window shared by neighbours.

    Returns:
        (B, 1, D, H, W) images in [-1, 1].
    """
    factor = model.latent_factor
    wins = windows(tuple(z.shape[2:]), latent_window, overlap)
    if len(wins) == 1:
        return model.decode_latents(z, seg)
    out = torch.zeros((z.shape[0], 1, *seg.shape[2:]), device=z.device)
    norm = torch.zeros(seg.shape[2:], device=z.device)
    weight = None
    for w in wins:
        img_idx = _image_slices(w, factor)
        piece = model.decode_latents(z[(slice(None), slice(None), *w)], seg[(slice(None), slice(None), *img_idx)])
        if weight is None:
            weight = blend_weight(tuple(piece.shape[2:])).to(z.device)
        out[(slice(None), slice(None), *img_idx)] += piece.float() * weight
        norm[img_idx] += weight
    return (out / norm).clamp(-1, 1)


@torch.no_grad()
def sample_volumes(
    model: torch.nn.Module,
    seg: torch.Tensor,
    block: tuple[int, int, int],
    generators: list[torch.Generator],
    *,
    sampler: str | None,
    steps: int | None,
    guidance: float,
    overlap: float = 0.5,
    progress: bool = False,
) -> torch.Tensor:
    """Generate volumes for one-hot label maps of one shape, any size >= the training block.

    The starting noise of item i comes from ``generators[i]`` alone, so deterministic samplers (DDIM with eta 0,
    rectified flow) give every item the same volume whatever else is in the batch; ancestral DDPM also draws
    per-step noise, from ``generators[0]``, so its items depend on the batch composition.

    Args:
        model: trained :class:`~diffusion.module.LatentDiffusionModule`.
        seg: (B, K, D, H, W) one-hot label maps; each axis a multiple of the latent factor and >= ``block``.
        block: training block (D, H, W) in image voxels.
        generators: B generators on the model's device.
        sampler, steps, guidance: as in ``LatentDiffusionModule.sample`` (None: the model's defaults).
        overlap: window overlap for denoising and decoding.
        progress: progress bar over the denoising steps.

    Returns:
        (B, 1, D, H, W) images in [-1, 1].
    """
    if len(generators) != seg.shape[0]:
        raise ValueError(f"need one generator per label map: {len(generators)} for a batch of {seg.shape[0]}")
    if any(s < b for s, b in zip(seg.shape[2:], block)):
        raise ValueError(f"label map {tuple(seg.shape[2:])} is smaller than the block {tuple(block)}: pad it first")
    model.check_seg(seg)
    if not model.latent_norm.is_fitted:
        raise RuntimeError("latent statistics are not set: the model is untrained")
    hp = model.hparams
    sampler = sampler or hp.sampler
    if steps is None and sampler != "ddpm":
        steps = hp.sample_steps
    factor = model.latent_factor
    latent_window = tuple(b // f for b, f in zip(block, factor))
    seg = seg.to(model.device, torch.float32)
    shape = (1, model.first_stage.embedding_dim, *(s // f for s, f in zip(seg.shape[2:], factor)))
    noise = torch.cat([torch.randn(shape, device=model.device, generator=g) for g in generators])
    denoise = WindowedDenoiser(model.ema.module, seg, guidance, latent_window, factor, overlap)
    z = model.schedule.sample(denoise, noise, sampler, steps, hp.ddim_eta, generators[0], progress)
    z = model.latent_norm.denormalize(z)
    return decode_windows(model, z, seg, latent_window, overlap)
