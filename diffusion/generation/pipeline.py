"""Generate synthetic volumes for label maps: validate everything first, then sample, then write atomically."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dataset import DataError
from dataset.files import check_name, plan_outputs, write_run_record
from dataset.intensity import invert, validate_intensity
from dataset.label_table import LabelTable, load_class_ids
from dataset.nifti import load_label, save_nifti, voxel_size_dhw
from dataset.nifti_size import MAX_VOXELS_ENV, max_voxels
from dataset.resample import resample_to_shape, same_extent_shape
from diffusion.generation.geometry import pad_label, padded_shape
from diffusion.sampling import WINDOW_MODES, SamplerSettings

if TYPE_CHECKING:
    from diffusion.module import LatentDiffusionModule

log = logging.getLogger(__name__)
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
#: The run record every generation leaves in its output folder (``dataset.files.write_run_record``).
RECORD_NAME = "generation.json"


@dataclass(frozen=True)
class LabelVolume:
    """One input label map: (D, H, W) integers (int16 where the values fit) with its NIfTI (I, J, K) affine."""

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
    window: str = "auto"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {WINDOW_MODES}, got {self.window!r}")


def load_model(ckpt: Path, device: torch.device, compile: bool = False) -> LatentDiffusionModule:
    """Load a diffusion checkpoint for generation, as untrusted data (:func:`diffusion.module.load_checkpoint`).

    ``compile`` overrides the checkpoint's own ``compile`` hyperparameter: it is a choice of this run.
    """
    from diffusion.module import load_checkpoint

    return load_checkpoint(ckpt, device, compile=compile)


def output_path(out_dir: Path, volume_id: str, sample: int) -> Path:
    """``<out>/<id>_s<k>.nii.gz``: the naming that ``evaluation/compute_metrics.py`` pairs with ``<id>``.

    Raises:
        DataError: ``volume_id`` (from a file name, manifest or checkpoint) is not a safe single path component.
    """
    return out_dir / f"{check_name(volume_id, 'label map id')}_s{sample}.nii.gz"


def volume_seed(seed: int, volume_id: str, sample: int) -> int:
    """Seed of one output volume, independent of which other volumes are generated in the same run."""
    digest = hashlib.sha256(f"{seed}:{volume_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def load_label_volumes(
    files: list[Path] | tuple[Path, ...], label_nc: int, table: LabelTable | None = None
) -> list[LabelVolume]:
    """Load and validate every label map before any work (a bad file fails the run before it starts).

    Args:
        files: NIfTI label maps.
        label_nc: the model's classes.
        table: the checkpoint's label table: files hold the user's ids, read through it into class ids.

    Raises:
        DataError: unreadable/4-D/non-integer file, or classes (or ids) the model does not know (names the file).
    """
    from dataset.nifti import strip_nifti_suffix

    volumes = []
    for path in files:
        if table is not None:
            label, affine = load_class_ids(path, label_nc, table)  # a value outside the table: named
        else:
            # 4-D, non-integer, NaN: DataError naming the file; int16 where the values fit (windows widen it)
            label, affine = load_label(path, compact=True)
        if label.size and (label.min() < 0 or label.max() >= label_nc):
            unknown = sorted(int(v) for v in np.unique(label) if v < 0 or v >= label_nc)
            raise DataError(f"{path}: classes {unknown[:10]} unknown to the model (it knows 0..{label_nc - 1})")
        volume_id = check_name(strip_nifti_suffix(Path(path).name), f"{path}: label map id")
        volumes.append(LabelVolume(volume_id, label, affine, str(path)))
    return volumes


def _prepare(
    vol: LabelVolume,
    block: tuple[int, int, int],
    multiple: tuple[int, int, int],
    voxel: tuple[float, ...] | None,
    resample: bool,
) -> tuple[torch.Tensor, tuple[slice, ...], tuple[int, int, int]]:
    """Resample to the training voxel size, pad to a samplable shape; return the label and how to undo both.

    ``multiple``: image sizes the sampler takes (the latent factor, times the denoiser's size multiple in-plane
    when whole planes are denoised at once).
    """
    label = vol.label
    work_shape = tuple(label.shape)
    if resample and voxel is not None:
        own = voxel_size_dhw(vol.affine)
        if not np.allclose(own, voxel, rtol=1e-3):
            work_shape = same_extent_shape(label.shape, own, tuple(voxel))
            # the voxel limit holds for the grid that is sampled, checked before it is allocated
            if math.prod(work_shape) > max_voxels():
                raise DataError(
                    f"{vol.source}: resampled from {tuple(round(v, 3) for v in own)} mm to the training voxel size "
                    f"{tuple(voxel)} mm it would have {work_shape} = {math.prod(work_shape)} voxels, over the limit "
                    f"of {max_voxels()} ({MAX_VOXELS_ENV}); check its voxel size or pass --no-resample"
                )
            log.info(
                "%s: voxel size %s mm -> training %s mm (shape %s -> %s)",
                vol.source,
                tuple(round(v, 3) for v in own),
                tuple(voxel),
                tuple(label.shape),
                work_shape,
            )
            label = resample_to_shape(label, work_shape, order=0)
    target = padded_shape(work_shape, multiple, block)
    padded, crop = pad_label(torch.from_numpy(label), target)
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
    image = resample_to_shape(x.float()[job.crop].cpu().numpy(), job.vol.label.shape, order=1)
    if tuple(image.shape) != tuple(job.vol.label.shape):
        raise RuntimeError(f"{job.vol.source}: output shape {tuple(image.shape)} != input {job.vol.label.shape}")
    image = np.clip(image, -1, 1)
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


def sidecar_path(path: Path, suffix: str) -> Path:
    """``<id>_s<k><suffix>`` beside the volume ``<id>_s<k>.nii.gz`` (previews: ``.png``, ``.gif``)."""
    return path.with_name(path.name[: -len(".nii.gz")] + suffix)


def output_files(
    out_dir: Path, volumes: list[LabelVolume], num_samples: int, sidecar_suffixes: tuple[str, ...] = ()
) -> list[Path]:
    """Every file :func:`generate` writes for these label maps: volumes, then their sidecars (``.png``, ...)."""
    paths = [output_path(out_dir, vol.id, k) for vol in volumes for k in range(num_samples)]
    return paths + [sidecar_path(p, sfx) for p in paths for sfx in sidecar_suffixes]


def output_units(intensity: dict | None) -> dict[str, Any]:
    """Intensity units and value range of the written volumes (recorded so metrics need not guess a range)."""
    try:
        spec = validate_intensity(intensity)
    except ValueError:
        spec = {"kind": "none", "invertible": True}
    if spec["kind"] == "ct_window":
        return {"units": "HU", "data_range": [float(spec["hu_min"]), float(spec["hu_max"])]}
    return {"units": "model", "data_range": [-1.0, 1.0]}


def generate(
    model: LatentDiffusionModule,
    volumes: list[LabelVolume],
    out_dir: Path,
    settings: GenerationSettings,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    on_volume: Callable[[LabelVolume, int, np.ndarray, Path], None] | None = None,
    sidecar_suffixes: tuple[str, ...] = (),
    record: dict[str, Any] | None = None,
) -> list[Path]:
    """Generate ``settings.num_samples`` volumes per label map into ``out_dir`` as ``<id>_s<k>.nii.gz``.

    Every output path is checked before the first sample is drawn (:func:`dataset.files.plan_outputs`), so a
    run never dies half-way on an existing file; files appear only complete (:func:`dataset.nifti.save_nifti`).
    Each output has exactly its label map's shape and affine. At the end ``out_dir/generation.json`` records the
    run (settings, inputs, outputs as names relative to ``out_dir``, plus ``record``), so a later ``--overwrite``
    replaces exactly this set.

    Args:
        model: trained diffusion model (eval mode, on its device).
        volumes: validated label maps (:func:`load_label_volumes`).
        out_dir: output folder.
        settings: sampler, steps, guidance, samples, seed, overlap, window mode, resampling, precision.
        batch_size: label maps (or samples) of one working shape sampled together.
        overwrite: replace the previous run's outputs.
        progress: progress bars over volumes and denoising steps.
        on_volume: called with (label volume, sample index, image, path) after each file is written.
        sidecar_suffixes: files ``<id>_s<k><suffix>`` that ``on_volume`` writes (e.g. ``.png``): checked up front
            and recorded as outputs too.
        record: extra plain data for the run record (checkpoint hash, command line inputs).

    Returns:
        The written volumes, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [(vol, k, output_path(out_dir, vol.id, k)) for vol in volumes for k in range(settings.num_samples)]
    files = output_files(out_dir, volumes, settings.num_samples, sidecar_suffixes)
    plan = plan_outputs(out_dir, files, overwrite, RECORD_NAME)
    sampler = model.sampler_defaults.resolve(settings.sampler, settings.steps, settings.guidance)
    info = dict(model.hparams.get("data_info") or {})
    block = tuple(model.block_size) if model.block_size is not None else tuple(info.get("block_size") or ())
    if len(block) != 3:
        raise ValueError("the checkpoint records no training block size (block_size); cannot tile the volume")
    voxel = tuple(info["voxel_size"]) if info.get("voxel_size") else None
    multiple = tuple(model.latent_factor)
    if settings.window == "auto":  # whole planes: pad in-plane to sizes the network takes in one piece
        net_multiple = model.denoiser.size_multiple
        multiple = (multiple[0], *(f * m for f, m in zip(multiple[1:], net_multiple[1:])))
    prepared = {vol.id: _prepare(vol, block, multiple, voxel, settings.resample) for vol in volumes}
    jobs = [_Job(vol, k, path, *prepared[vol.id][:2]) for vol, k, path in paths]
    written = []
    # disable=None: no bar when stderr is not a terminal (a log file gets no escape fragments)
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=None if progress else True)
    for batch in _batches(jobs, batch_size):
        seeds = [volume_seed(settings.seed, j.vol.id, j.sample) for j in batch]
        x = sample_batch(model, [j.label for j in batch], seeds, sampler, block, settings, progress)
        for i, job in enumerate(batch):
            image = _finish(x[i, 0], job, info.get("intensity"))
            save_nifti(job.path, image, job.vol.affine, overwrite=overwrite)
            if on_volume is not None:
                on_volume(job.vol, job.sample, image, job.path)
            written.append(job.path)
            bar.update(1)
    bar.close()
    plan.remove_stale()  # the previous run's files that this run did not rewrite
    write_run_record(
        out_dir / RECORD_NAME,
        {
            "command": "generate",
            **(record or {}),
            "seed": settings.seed,
            **sampler.record(),
            "num_samples": settings.num_samples,
            "overlap": settings.overlap,
            "window": settings.window,
            "resample": settings.resample,
            "precision": settings.precision,
            **output_units(info.get("intensity")),
            "inputs": [{"id": v.id, "source": v.source} for v in volumes],
            "outputs": [p.name for p in plan.files],
        },
    )
    return written


def sample_batch(
    model: LatentDiffusionModule,
    labels: list[torch.Tensor],
    seeds: list[int],
    sampler: SamplerSettings,
    block: tuple[int, ...],
    settings: GenerationSettings,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one batch of same-shape integer label maps (D, H, W) with per-item seeds → (B, 1, D, H, W) images.

    The integer maps go to :meth:`LatentDiffusionModule.sample_images` as they are: each window is one-hot encoded
    on its own, so memory follows the window, not the volume times the classes.
    """
    gens = [torch.Generator(device=model.device).manual_seed(s) for s in seeds]
    dtype = PRECISIONS[settings.precision]
    ctx = torch.autocast(model.device.type, dtype=dtype) if dtype is not None else nullcontext()
    with ctx:
        return model.sample_images(
            torch.stack(labels).to(model.device),
            gens,
            sampler,
            train_window=block,
            window_mode=settings.window,
            overlap=settings.overlap,
            progress=progress,
        )
