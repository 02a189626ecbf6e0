"""Generate synthetic volumes for label maps: validate everything first, then sample, then write atomically."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dataset import DataError, one_hot
from dataset.intensity import invert
from dataset.nifti import load_label, save_nifti, voxel_size_dhw
from diffusion.generation.blockwise import sample_volumes
from diffusion.generation.geometry import pad_label, padded_shape, resample_image, resample_label, resampled_shape

log = logging.getLogger(__name__)
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


@dataclass(frozen=True)
class LabelVolume:
    """One input label map: (D, H, W) int64 with the affine of its NIfTI (I, J, K) array."""

    id: str
    label: np.ndarray
    affine: np.ndarray
    source: str


@dataclass(frozen=True)
class GenerationSettings:
    """What ``scripts/generate.py`` was asked for (see its ``--help``)."""

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    num_samples: int = 1
    seed: int = 0
    overlap: float = 0.5
    resample: bool = True
    precision: str = "32"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")


def output_path(out_dir: Path, volume_id: str, sample: int) -> Path:
    """``<out>/<id>_s<k>.nii.gz``: the naming that ``evaluation/compute_metrics.py`` pairs with ``<id>``."""
    return out_dir / f"{volume_id}_s{sample}.nii.gz"


def volume_seed(seed: int, volume_id: str, sample: int) -> int:
    """Seed of one output volume, independent of which other volumes are generated in the same run."""
    digest = hashlib.sha256(f"{seed}:{volume_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def load_label_volumes(files: list[Path] | tuple[Path, ...], label_nc: int) -> list[LabelVolume]:
    """Load and validate every label map before any work (a bad file fails the run before it starts).

    Raises:
        DataError: unreadable/4-D/non-integer file, or classes the model does not know (names the file).
    """
    from dataset.nifti import strip_nifti_suffix

    volumes = []
    for path in files:
        label, affine = load_label(path)  # 4-D, non-integer, NaN: DataError naming the file
        if label.size and (label.min() < 0 or label.max() >= label_nc):
            unknown = sorted(int(v) for v in np.unique(label) if v < 0 or v >= label_nc)
            raise DataError(f"{path}: classes {unknown[:10]} unknown to the model (it knows 0..{label_nc - 1})")
        volumes.append(LabelVolume(strip_nifti_suffix(Path(path).name), label, affine, str(path)))
    return volumes


def _prepare(
    vol: LabelVolume,
    block: tuple[int, int, int],
    factor: tuple[int, int, int],
    voxel: tuple[float, ...] | None,
    resample: bool,
) -> tuple[torch.Tensor, tuple[slice, ...], tuple[int, int, int]]:
    """Resample to the training voxel size, pad to a samplable shape; return the label and how to undo both."""
    label = torch.from_numpy(vol.label)
    work_shape = tuple(label.shape)
    if resample and voxel is not None:
        own = voxel_size_dhw(vol.affine)
        if not np.allclose(own, voxel, rtol=1e-3):
            work_shape = resampled_shape(tuple(label.shape), own, tuple(voxel))
            log.info(
                "%s: voxel size %s mm -> training %s mm (shape %s -> %s)",
                vol.source,
                tuple(round(v, 3) for v in own),
                tuple(voxel),
                tuple(label.shape),
                work_shape,
            )
            label = resample_label(label, work_shape)
    target = padded_shape(work_shape, factor, block)
    padded, crop = pad_label(label, target)
    return padded, crop, work_shape  # type: ignore[return-value]


@dataclass(frozen=True)
class _Job:
    vol: LabelVolume
    sample: int
    path: Path
    label: torch.Tensor  # padded (D', H', W') label in the training voxel size
    crop: tuple[slice, ...]


def _finish(x: torch.Tensor, job: _Job, intensity: dict | None) -> np.ndarray:
    """Crop the padding, resample back to the input grid, map to data units where invertible.

    Args:
        x: (D', H', W') generated image in [-1, 1].

    Returns:
        (D, H, W) float32 with the input label map's shape: HU for a CT window, else the [-1, 1] scale.
    """
    image = x.float()[job.crop]
    if tuple(image.shape) != tuple(job.vol.label.shape):
        image = resample_image(image, tuple(job.vol.label.shape))
    if tuple(image.shape) != tuple(job.vol.label.shape):
        raise RuntimeError(f"{job.vol.source}: output shape {tuple(image.shape)} != input {job.vol.label.shape}")
    image = image.clamp(-1, 1).cpu().numpy()
    try:
        return invert(image, intensity).astype(np.float32)
    except ValueError:  # percentile / per-block normalisation: no way back to scanner units
        return image.astype(np.float32)


def _batches(jobs: list[_Job], batch_size: int) -> Iterator[list[_Job]]:
    """Consecutive jobs of the same working shape, at most ``batch_size`` at a time."""
    batch: list[_Job] = []
    for job in jobs:
        if batch and (len(batch) == batch_size or batch[0].label.shape != job.label.shape):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


def generate(
    model: torch.nn.Module,
    volumes: list[LabelVolume],
    out_dir: Path,
    settings: GenerationSettings,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    on_volume: Callable[[LabelVolume, int, np.ndarray, Path], None] | None = None,
    sidecar_suffixes: tuple[str, ...] = (),
) -> list[Path]:
    """Generate ``settings.num_samples`` volumes per label map into ``out_dir`` as ``<id>_s<k>.nii.gz``.

    Every output path is checked before the first sample is drawn, so a run never dies half-way on an existing
    file; files appear only complete (see :func:`dataset.nifti.save_nifti`). Each output has exactly its label
    map's shape and affine.

    Args:
        model: trained :class:`~diffusion.module.LatentDiffusionModule` (eval mode, on its device).
        volumes: validated label maps (:func:`load_label_volumes`).
        out_dir: output folder.
        settings: sampler, steps, guidance, samples, seed, overlap, resampling, precision.
        batch_size: label maps (or samples) of one working shape sampled together.
        overwrite: replace existing outputs.
        progress: progress bars over volumes and denoising steps.
        on_volume: called with (label volume, sample index, image, path) after each file is written.
        sidecar_suffixes: files ``<id>_s<k><suffix>`` that ``on_volume`` writes (e.g. ``.png``): checked for
            existence up front too, so a run without ``overwrite`` never stops half-way.

    Returns:
        The written files, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [(vol, k, output_path(out_dir, vol.id, k)) for vol in volumes for k in range(settings.num_samples)]
    candidates = [p for _, _, p in paths]
    candidates += [p.with_name(p.name[: -len(".nii.gz")] + sfx) for p in list(candidates) for sfx in sidecar_suffixes]
    existing = [str(p) for p in candidates if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --overwrite")
    info = dict(model.hparams.get("data_info") or {})
    block = tuple(model.block_size) if model.block_size is not None else tuple(info.get("block_size") or ())
    if len(block) != 3:
        raise ValueError("the checkpoint records no training block size (block_size); cannot tile the volume")
    voxel = tuple(info["voxel_size"]) if info.get("voxel_size") else None
    prepared = {vol.id: _prepare(vol, block, model.latent_factor, voxel, settings.resample) for vol in volumes}
    jobs = [_Job(vol, k, path, *prepared[vol.id][:2]) for vol, k, path in paths]
    guidance = model.hparams.guidance if settings.guidance is None else settings.guidance
    dtype = PRECISIONS[settings.precision]
    written = []
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=not progress)
    for batch in _batches(jobs, batch_size):
        seg = one_hot(torch.stack([j.label for j in batch])[:, None], model.label_nc).to(model.device)
        gens = [
            torch.Generator(device=model.device).manual_seed(volume_seed(settings.seed, j.vol.id, j.sample))
            for j in batch
        ]
        ctx = torch.autocast(model.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            x = sample_volumes(
                model,
                seg,
                block,
                gens,
                sampler=settings.sampler,
                steps=settings.steps,
                guidance=guidance,
                overlap=settings.overlap,
                progress=progress,
            )
        for i, job in enumerate(batch):
            image = _finish(x[i, 0], job, info.get("intensity"))
            save_nifti(job.path, image, job.vol.affine, overwrite=overwrite)
            if on_volume is not None:
                on_volume(job.vol, job.sample, image, job.path)
            written.append(job.path)
            bar.update(1)
    bar.close()
    return written
