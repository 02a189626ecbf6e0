"""Regenerate the edit region of a real scan on the one sampling path (RePaint-style), then composite.

1. The scan is normalised as in training (its own percentiles for MR) and only the crop around the region
   (:func:`diffusion.editing.region.crop_box`) is encoded, once.
2. The model samples the crop's latent with the edited label map (:meth:`LatentDiffusionModule.sample_images`, the
   ordinary windowed, guided loop); at every step :class:`KnownLatent` (the loop's ``step_hook``) puts the real
   latent, forward-noised to that step, everywhere outside the latent-resolution region (Lugmayr et al., RePaint,
   https://arxiv.org/abs/2201.09865), and the clean real latent after the last step. A checkpoint trained with
   ``inpaint_inputs`` (:mod:`diffusion.inpaint_inputs`) also gets the masked clean real latent and the region mask
   as inputs at every step, so it can use the context instead of only being overwritten by it. The replacement
   stays on for such a model too: in its training the noisy latent outside the region was exactly the forward-
   noised real latent, which is what the replacement makes it at sampling, and the decoder then sees the real
   latent outside the region.
3. The latent is decoded with the edited map (the same windows), mapped back to the file's units with the scan's
   own normalisation record, and composited with the region's weight (:mod:`diffusion.editing.region`): outside
   the region the caller keeps the file's stored voxels (:func:`composite_stored`), so they are bit for bit the
   input's, in its dtype and scaling.

Only the crop's windows are ever denoised or decoded (:attr:`EditResult.windows_sampled` of
:attr:`EditResult.windows_total` for the whole volume), so a small edit in a large CT costs a few windows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from dataset.intensity import invert_scan, normalize
from dataset.nifti import StoredVolume
from diffusion.editing.region import EditRegion, crop_box, latent_mask
from diffusion.generation.geometry import pad_label, padded_shape
from diffusion.inpaint_inputs import inpaint_context
from diffusion.sampling import DEFAULT_MAX_PLANE, SamplerSettings, decode_windows, latent_window, windows
from diffusion.schedulers import NoiseSchedule

if TYPE_CHECKING:
    from diffusion.module import LatentDiffusionModule

log = logging.getLogger(__name__)


class KnownLatent:
    """Sampling ``step_hook``: outside ``mask`` the latent is the known latent at the step's noise level.

    Args:
        z0: (B, C, d, h, w) clean known latent, in the diffusion's (normalised) space.
        mask: (d, h, w) bool, True where the sampler is free (the region); broadcast over batch and channels.
        schedule: the model's noise schedule (its ``add_noise`` gives q(z_t | z0)).
        generator: RNG for the forward noise, on ``z0``'s device (a fresh draw at every step, as in RePaint).
    """

    def __init__(
        self, z0: torch.Tensor, mask: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator
    ) -> None:
        if tuple(mask.shape) != tuple(z0.shape[2:]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match the latent {tuple(z0.shape[2:])}")
        self.z0 = z0.float()
        self.free = mask.to(z0.device, torch.bool)[None, None]
        self.schedule = schedule
        self.generator = generator
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x: (B, C, d, h, w) latent about to be denoised at timestep t (t = -1: the final, clean latent)."""
        self.calls += 1
        if t < 0:
            known = self.z0
        else:
            noise = torch.randn(self.z0.shape, device=self.z0.device, generator=self.generator)
            tb = torch.full((self.z0.shape[0],), int(t), device=self.z0.device, dtype=torch.long)
            known = self.schedule.add_noise(self.z0, noise, tb)
        return torch.where(self.free, x, known)


@dataclass(frozen=True)
class EditResult:
    """What :func:`edit_scan` computed.

    Attributes:
        image: (D, H, W) float32 in the file's units: the input outside the region, the composite inside.
        generated: (D, H, W) float32 decoded sample in the file's units inside the crop, NaN outside it.
        crop: image slices of the computed crop.
        windows_sampled: denoising windows of the crop (the only ones computed).
        windows_total: windows a whole-volume generation of this scan would denoise.
    """

    image: np.ndarray
    generated: np.ndarray
    crop: tuple[slice, ...]
    windows_sampled: int
    windows_total: int
    settings: dict = field(default_factory=dict)


def _multiple(model: LatentDiffusionModule, net: torch.nn.Module, window_mode: str) -> tuple[int, int, int]:
    factor = tuple(int(f) for f in model.latent_factor)
    if window_mode != "auto":
        return factor  # type: ignore[return-value]
    m = net.size_multiple  # whole planes: in-plane sizes the network takes in one piece (as generate.py pads)
    return (factor[0], factor[1] * int(m[1]), factor[2] * int(m[2]))


def _count_windows(
    shape: Sequence[int],
    model: LatentDiffusionModule,
    net: torch.nn.Module,
    block: Sequence[int],
    window_mode: str,
    overlap: float,
) -> int:
    padded = padded_shape(tuple(shape), _multiple(model, net, window_mode), tuple(block))  # type: ignore[arg-type]
    win = latent_window(padded, model.latent_factor, block, window_mode, DEFAULT_MAX_PLANE, net.size_multiple)
    latent = tuple(s // f for s, f in zip(padded, model.latent_factor))
    return len(windows(latent, win, overlap))  # type: ignore[arg-type]


@torch.no_grad()
def edit_scan(
    model: LatentDiffusionModule,
    image: np.ndarray,
    edited: np.ndarray,
    region: EditRegion,
    settings: SamplerSettings,
    seed: int,
    block: Sequence[int],
    *,
    window_mode: str = "auto",
    overlap: float = 0.5,
    context: Sequence[int] | None = None,
    progress: bool = False,
    resample: tuple[int, int] | None = None,
) -> EditResult:
    """Regenerate ``region`` of a real scan under the edited label map (module docstring).

    Args:
        model: trained stage-2 model (eval mode, on its device).
        image: (D, H, W) float32 scan in its file's units (HU for CT).
        edited: (D, H, W) int64 edited label map on the same grid (classes checked by the caller).
        region: :func:`diffusion.editing.region.edit_region` output.
        settings: resolved sampler settings (``model.sampler_defaults.resolve``).
        seed: seed of the sampling noise and of the forward noise outside the region.
        block: training block (D, H, W) in image voxels.
        window_mode, overlap: as for generation.
        context: image voxels of context around the region's bounding box per axis (default: half the block).
        resample: RePaint's resampling jumps (jump length, count): blocks of steps re-run ``count`` times after
            forward-noising back (:meth:`diffusion.schedulers.NoiseSchedule.sample`); ``count`` times the
            denoiser evaluations. None: none.

    Returns:
        :class:`EditResult`.
    """
    spec = (model.hparams.get("data_info") or {}).get("intensity")
    normalised, record = normalize(image, spec, "scan")
    net = model.ema.module if settings.use_ema else model.denoiser
    factor = tuple(int(f) for f in model.latent_factor)
    multiple = _multiple(model, net, window_mode)
    context = tuple(context) if context is not None else tuple(int(b) // 2 for b in block)
    box = crop_box(region.mask, context, factor, block)
    work = padded_shape(tuple(s.stop - s.start for s in box), multiple, tuple(block))  # type: ignore[arg-type]
    x, unpad = pad_label(torch.from_numpy(np.ascontiguousarray(normalised[box])), work)
    lab, _ = pad_label(torch.from_numpy(np.ascontiguousarray(edited[box])), work)
    free, _ = pad_label(torch.from_numpy(np.ascontiguousarray(region.mask[box])), work)
    device = model.device
    z0 = model.encode(x[None, None].to(device))  # normalised latent of the real crop, encoded once
    lmask = latent_mask(free.numpy(), factor)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    known = KnownLatent(z0, lmask, model.schedule, torch.Generator(device=device).manual_seed(int(seed) + 1))
    trained = bool(getattr(model, "inpaint_inputs", False))
    given = inpaint_context(z0, lmask) if trained else None  # the masked real latent and the region
    labels = lab[None].to(device)
    z = model.sample_images(
        labels,
        [gen],
        settings,
        train_window=tuple(block),
        window_mode=window_mode,
        overlap=overlap,
        progress=progress,
        return_latents=True,
        step_hook=known,
        inpaint=given,
        resample=resample,
    )
    window = latent_window(work, factor, block, window_mode, DEFAULT_MAX_PLANE, net.size_multiple)
    spade = model.first_stage.decoder_type == "spade"
    out = decode_windows(model.decode_latents, z, labels if spade else None, model.label_nc, factor, window, overlap)
    generated_crop = invert_scan(out[0, 0].float().cpu().numpy()[unpad], spec, record).astype(np.float32)
    generated = np.full(image.shape, np.nan, dtype=np.float32)
    generated[box] = generated_crop
    alpha = region.alpha[box]
    result = image.astype(np.float32, copy=True)
    result[box] = alpha * generated_crop + (1.0 - alpha) * image[box]
    n_sampled = len(windows(tuple(s // f for s, f in zip(work, factor)), window, overlap))  # type: ignore[arg-type]
    n_total = _count_windows(image.shape, model, net, block, window_mode, overlap)
    log.info(
        "edit: crop %s of %s, %d of %d window(s)", [(s.start, s.stop) for s in box], image.shape, n_sampled, n_total
    )
    return EditResult(
        result,
        generated,
        box,
        n_sampled,
        n_total,
        {
            "seed": int(seed),
            **settings.record(),
            "window": window_mode,
            "overlap": overlap,
            "context": list(context),
            "crop": [[s.start, s.stop] for s in box],
            "windows_sampled": n_sampled,
            "windows_total": n_total,
            "forward_noise_steps": known.calls,
            "inpaint_inputs": trained,
            "resample": {"jump_length": int(resample[0]), "count": int(resample[1])} if resample else None,
            "sampler_steps_run": known.calls - 1,
        },
    )


def composite_stored(volume: StoredVolume, result: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The file's stored array with ``result`` (file units) written into ``mask`` only; the rest is untouched.

    Inside the mask values go back through the file's scaling (``stored = (value - inter) / slope``), rounded and
    clipped to an integer dtype's range; outside it the stored values are copied, so they are bit for bit the
    input's.

    Args:
        volume: the input scan as stored (:func:`dataset.nifti.read_stored`).
        result: (D, H, W) float values in the file's units.
        mask: (D, H, W) bool.

    Returns:
        (D, H, W) array in the stored dtype.
    """
    out = volume.stored.copy()
    values = (result[mask].astype(np.float64) - volume.inter) / volume.slope
    dtype = volume.stored.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[mask] = values.astype(dtype)
    return out


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """mm³ of one voxel (|det| of the affine's 3 x 3 part)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


__all__ = ["EditResult", "KnownLatent", "composite_stored", "edit_scan", "voxel_volume_mm3"]
