"""Performance benchmark of Med-LSDM (SPEC §9): training steps, samplers, block-wise generation, fast paths.

    python scripts/benchmark.py --device cpu --quick --out runs/bench/bench.json
    python scripts/benchmark.py --device cuda --out bench.json --ckpt DIFFUSION.ckpt --rflow-ckpt RFLOW.ckpt
    python scripts/benchmark.py --sizes 16 32 32x64x64 --models vqgan_normal_tiny diffusion_tiny --out bench.json

What is measured (every time is a median over ``--repeats`` runs after ``--warmup`` untimed ones):

1. **Training** (``training``): wall time and peak memory of one optimiser step of the normal and SPADE VQ-GAN
   (``config/model/vq_gan_3d*.yaml``, ``vq_gan_spade*.yaml``; GAN terms on) and of the latent diffusion model
   (``diffusion*.yaml``, on an untrained first stage of the matching VQ-GAN config), each in a real Lightning
   ``Trainer`` (batches of random volumes), at every ``--sizes`` image size, the paper's block 32x256x256 (latent
   8x8x64x64) included by default. A size is skipped, with the reason recorded, when it is invalid for the model or
   when the prediction from the next smaller size (linear in voxels) exceeds the memory available or
   ``--max-seconds``.
2. **Fast paths**: the Trainer's ``precision`` (bf16-mixed; 16-mixed on CUDA) and the diffusion model's
   ``compile`` option, each against fp32 at one size, with the first-step loss compared to fp32; for generation
   ``scripts/generate.py --precision bf16`` and ``--compile``, with the generated volume compared to fp32.
3. **Sampling** (``sampling``, needs ``--ckpt``): time per volume of ancestral DDPM (all T steps), DDIM at
   25/50/100 steps and rectified flow at 30 steps (``--samplers``), and the paired SSIM/PSNR each reaches against
   the real volumes of the checkpoint's dataset split. Rectified flow needs a checkpoint trained with
   ``model=diffusion_rflow`` (``--rflow-ckpt``); a sampler that does not fit a checkpoint's objective is recorded as
   not applicable.
4. **Generation** (``generation``): ``diffusion.generation.pipeline.generate`` (what ``scripts/generate.py`` runs)
   on label maps from one training block up to the full size, block-wise with overlapping windows; time and peak
   memory per size and the exponents k of time ~ voxels^k and memory ~ voxels^k (log-log least squares).
5. ``--profile DIR``: torch.profiler tables (top ops by self CPU time) of one training step of each model and one
   sampling step.

Memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS (``VmHWM``, reset before each
measurement through ``/proc/self/clear_refs``), reported with the RSS before the measurement. Results go to
``--out`` (JSON) and a Markdown summary beside it (same name, ``.md``), both written atomically; an existing file
is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("benchmark")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
SCHEMA = "med-lsdm-benchmark/1"
PAPER_BLOCK = (32, 256, 256)  # image block of the paper; latent 8x8x64x64 with the [4, 4, 4] VQ-GAN
DEFAULT_SIZES = ((16, 16, 16), (32, 32, 32), (32, 64, 64), (32, 128, 128), PAPER_BLOCK)
QUICK_SIZES = ((16, 16, 16),)
DEFAULT_SAMPLERS = ("ddpm", "ddim:25", "ddim:50", "ddim:100", "rflow:30")
GEN_MULTIPLES = ((1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 4, 4), (4, 4, 4))
QUICK_GEN_MULTIPLES = GEN_MULTIPLES[:4]
# a fast path gives "the same result" as fp32 when the relative L2 error of the network outputs (training) / the mean
# absolute voxel difference of the generated volume in [-1, 1] (generation) stays within these
OUTPUT_RTOL = {"bf16-mixed": 5e-2, "16-mixed": 1e-2, "compile": 1e-4}
IMAGE_ATOL = {"bf16": 5e-2, "16": 2e-2, "compile": 1e-3}


@dataclass(frozen=True)
class ModelSpec:
    """A model to train: its stage, its config (``config/model/<config>.yaml``) and, for stage 2, the VQ-GAN config
    of its (untrained) first stage."""

    stage: str
    config: str
    first_stage: str | None = None


MODELS: dict[str, ModelSpec] = {
    "vqgan_normal_tiny": ModelSpec("vqgan", "vq_gan_3d_tiny"),
    "vqgan_spade_tiny": ModelSpec("vqgan", "vq_gan_spade_tiny"),
    "diffusion_tiny": ModelSpec("diffusion", "diffusion_tiny", "vq_gan_3d_tiny"),
    "vqgan_normal": ModelSpec("vqgan", "vq_gan_3d"),
    "vqgan_spade": ModelSpec("vqgan", "vq_gan_spade"),
    "diffusion": ModelSpec("diffusion", "diffusion", "vq_gan_3d"),
}
GEN_BLOCKS = {"diffusion_tiny": (32, 32, 32), "diffusion": PAPER_BLOCK}


# ---------------------------------------------------------------------------------------------- small helpers
def parse_size(text: str) -> tuple[int, int, int]:
    """``"32"`` → (32, 32, 32); ``"32x256x256"`` → (32, 256, 256)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or DxHxW with positive ints, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def size_str(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def parse_sampler(text: str) -> tuple[str, int | None]:
    """``"ddpm"`` → ("ddpm", None) (all T steps); ``"ddim:50"`` → ("ddim", 50)."""
    name, _, steps = text.partition(":")
    if name not in ("ddpm", "ddim", "rflow") or (steps and (not steps.isdigit() or int(steps) < 1)):
        raise argparse.ArgumentTypeError(f"sampler must be ddpm, ddim:N or rflow:N, got {text!r}")
    if name == "ddpm" and steps:
        raise argparse.ArgumentTypeError("ddpm always runs all T steps: write 'ddpm'")
    return name, int(steps) if steps else None


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median (the reported number), min, max and count."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log y = k log x + log c``: the exponent k of y ~ c x^k.

    Returns:
        ``{"exponent": k, "coefficient": c, "r2": R^2 in log space, "points": n}``.

    Raises:
        ValueError: fewer than two points, non-positive values or a single distinct x.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need at least two (x, y) pairs, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("x and y must be positive for a log-log fit")
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if np.ptp(lx) == 0:
        raise ValueError("x has a single distinct value")
    k, logc = np.polyfit(lx, ly, 1)
    resid = ly - (k * lx + logc)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": float(k), "coefficient": float(math.exp(logc)), "r2": r2, "points": len(x)}


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path`` (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def json_safe(value: Any) -> Any:
    """NaN/inf → None (JSON has neither), tuples → lists, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------- machine, memory
def _proc_kb(field: str, path: str = "/proc/self/status") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other processes on a shared machine slow every number down."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, RAM and GPU (if any)."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ram_total_mb": round((_proc_kb("MemTotal", "/proc/meminfo") or 0) / 1024) or None,
        "ram_available_mb": round((_proc_kb("MemAvailable", "/proc/meminfo") or 0) / 1024) or None,
        "load_average_start": load_average(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device if device.type == "cuda" else 0)
        info["gpu"] = {
            "name": props.name,
            "memory_mb": round(props.total_memory / 2**20),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def versions() -> dict[str, str | None]:
    import monai
    import pytorch_lightning as pl

    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:
        lightning_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "lightning": lightning_version,
        "monai": monai.__version__,
        "numpy": np.__version__,
    }


class PeakMemory:
    """Peak memory of one measurement: CUDA allocator peak, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or self._reset_rss()
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated (tensors only; the CUDA context is not included)"
        elif self.resettable:
            self.kind = "process peak RSS (VmHWM, reset before each measurement through /proc/self/clear_refs)"
        else:
            self.kind = "process peak RSS since start (ru_maxrss; cannot be reset here, so only increases count)"
        self.baseline_mb = 0.0

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return _proc_kb("VmHWM") is not None
        except OSError:
            return False

    def current_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        kb = _proc_kb("VmRSS")
        return kb / 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def reset(self) -> None:
        _free(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_rss()
        self.baseline_mb = self.current_mb()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kb = _proc_kb("VmHWM") if self.resettable else None
        return kb / 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def result(self) -> dict[str, float]:
        peak = self.peak_mb()
        return {"peak_mb": round(peak, 1), "baseline_mb": round(self.baseline_mb, 1),
                "increase_mb": round(max(peak - self.baseline_mb, 0.0), 1)}  # fmt: skip

    def limit_mb(self) -> float:
        """Memory a measurement may predictably reach: 90 % of the GPU, or this RSS plus 85 % of MemAvailable."""
        if self.device.type == "cuda":
            return 0.9 * torch.cuda.get_device_properties(self.device).total_memory / 2**20
        avail = _proc_kb("MemAvailable", "/proc/meminfo")
        return self.current_mb() + 0.85 * avail / 1024 if avail is not None else math.inf


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_table(prof: torch.profiler.profile, device: torch.device, rows: int = 25) -> tuple[str, list[dict]]:
    """The profiler table sorted by self CPU time (and by self CUDA time on a GPU) and the top ops as records."""
    events = prof.key_averages()
    text = events.table(sort_by="self_cpu_time_total", row_limit=rows)
    if device.type == "cuda":
        key = (
            "self_device_time_total"
            if events and hasattr(events[0], "self_device_time_total")
            else "self_cuda_time_total"
        )
        with contextlib.suppress(Exception):  # the GPU table is a bonus; the CPU table is the contract
            text += "\n\n" + events.table(sort_by=key, row_limit=rows)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    records = [
        {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
         "self_cpu_pct": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count}
        for e in top
    ]  # fmt: skip
    return text, records


def start_profiler(device: torch.device) -> torch.profiler.profile:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=acts)
    prof.__enter__()
    return prof


# ---------------------------------------------------------------------------------------------- model building
@functools.cache
def compose_model_config(primary: str, model: str, overrides: tuple[str, ...] = ()) -> Any:
    """Compose ``config/<primary>.yaml`` with ``model=<model>`` and the embedded mni152 dataset (label_nc 5).

    Cached: callers only read the result (``hydra.utils.instantiate`` does not modify it).
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(primary, overrides=[f"model={model}", "dataset=mni152", *overrides])


def vgg_weights_missing() -> bool:
    from vq_gan_3d.perceptual import default_vgg16_path

    return not default_vgg16_path().is_file()


def build_vqgan(config: str, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A VQGANModule from its config, with the GAN terms on from the first batch; returns it and the changes."""
    import hydra

    cfg = compose_model_config("vqgan", config)
    changes: dict[str, Any] = {"discriminator_iter_start": 0}  # measure the full step (GAN on), not the warm-up
    if cfg.model.perceptual_weight > 0 and not cfg.model.perceptual_random_weights and vgg_weights_missing():
        changes["perceptual_random_weights"] = True  # same cost; the pretrained VGG16 file is not on this machine
    changes.update(kwargs)
    return hydra.utils.instantiate(cfg.model, _convert_="all", **changes), changes


def build_diffusion(
    config: str, first_stage: str, block: Sequence[int], **kwargs: Any
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A LatentDiffusionModule from its config on an *untrained* first stage built from a VQ-GAN config."""
    import hydra

    from diffusion.first_stage import architecture_hparams

    vq, _ = build_vqgan(first_stage, inference_only=True)
    cfg = compose_model_config("diffusion", config, ("model.first_stage_ckpt=null",))
    changes: dict[str, Any] = {"block_size": list(block), "latent_stats_batches": 1, **kwargs}
    model = hydra.utils.instantiate(
        cfg.model, _convert_="all", first_stage_hparams=architecture_hparams(vq), **changes
    )
    changes["first_stage"] = f"{first_stage} (untrained)"
    return model, changes


def build_model(
    spec: ModelSpec, size: Sequence[int], compile: bool = False, seed: int = 0
) -> tuple[torch.nn.Module, dict]:
    """The model of ``spec`` with seeded weights (a fast path and its fp32 baseline start from the same ones)."""
    torch.manual_seed(seed)
    if spec.stage == "vqgan":
        return build_vqgan(spec.config)
    return build_diffusion(spec.config, spec.first_stage or "vq_gan_3d_tiny", size, compile=compile)


def validity_error(model: torch.nn.Module, spec: ModelSpec, size: Sequence[int]) -> str | None:
    """Why ``size`` cannot be trained with ``model`` (None when it can), known before running."""
    factor = tuple(model.latent_factor)
    if any(s % f for s, f in zip(size, factor)):
        return f"image size {size_str(size)} is not divisible by the latent factor {size_str(factor)}"
    if spec.stage == "diffusion":
        latent = [s // f for s, f in zip(size, factor)]
        mults = model.hparams.denoiser_kwargs.get("dim_mults", [1])
        div = 2 ** (len(mults) - 1)
        axes = latent if model.hparams.denoiser == "monai_spade" else latent[1:]
        if any(a % div for a in axes):
            return f"latent {size_str(latent)}: the downsampled axes must be divisible by {div} (dim_mults {mults})"
    return None


class RandomVolumes(torch.utils.data.Dataset):
    """Seeded random batches in the data contract: image in [-1, 1] and a blocky K-class label map."""

    def __init__(self, n: int, size: Sequence[int], label_nc: int, seed: int = 0) -> None:
        self.n, self.size, self.label_nc, self.seed = n, tuple(size), label_nc, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + i)
        coarse = torch.randint(0, self.label_nc, tuple(max(s // 4, 1) for s in self.size), generator=g)
        label = torch.nn.functional.interpolate(coarse[None, None].float(), size=self.size, mode="nearest").long()[0]
        image = (label.float() / max(self.label_nc - 1, 1)) * 1.6 - 0.8 + 0.1 * torch.randn(1, *self.size, generator=g)
        return {"image": image.clamp(-1, 1), "label": label}


def random_label(size: Sequence[int], label_nc: int, seed: int = 0) -> np.ndarray:
    """A blocky (D, H, W) int64 label map (content does not change the cost)."""
    return RandomVolumes(1, size, label_nc, seed)[0]["label"][0].numpy()


# ---------------------------------------------------------------------------------------------- training
class StepTimer:
    """Lightning callback: wall time, loss and (optionally) a profile of every training batch."""

    def __init__(self, device: torch.device, loss_key: str, profile_batch: int | None) -> None:
        self.device, self.loss_key, self.profile_batch = device, loss_key, profile_batch
        self.times: list[float] = []
        self.losses: list[float | None] = []
        self.profile: torch.profiler.profile | None = None
        self._t0 = 0.0

    def callback(self) -> Any:
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if batch_idx == timer.profile_batch:
                    timer.profile = start_profiler(timer.device)
                synchronize(timer.device)
                timer._t0 = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
                synchronize(timer.device)
                elapsed = time.perf_counter() - timer._t0
                if i == timer.profile_batch and timer.profile is not None:
                    timer.profile.__exit__(None, None, None)
                    return
                timer.times.append(elapsed)
                loss = trainer.callback_metrics.get(timer.loss_key)
                timer.losses.append(float(loss) if loss is not None else None)

        return _Callback()


def train_steps(
    model: torch.nn.Module,
    stage: str,
    size: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    memory: PeakMemory,
    profile: bool = False,
) -> dict[str, Any]:
    """Run warm-up + repeats (+1 profiled) training batches in a Lightning Trainer; times exclude the profiled one."""
    import pytorch_lightning as pl

    n = args.warmup + args.repeats
    timer = StepTimer(device, "train/rec_loss" if stage == "vqgan" else "train/loss", n if profile else None)
    data = RandomVolumes(n + int(profile), size, int(model.hparams.label_nc), seed=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=0)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=[device.index or 0] if device.type == "cuda"
        else 1, precision=precision, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer.callback()],
    )  # fmt: skip
    pl.seed_everything(args.seed, verbose=False)
    memory.reset()
    t0 = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    wall = time.perf_counter() - t0
    mem = memory.result()
    if len(timer.times) != n:
        raise RuntimeError(f"expected {n} timed batches, got {len(timer.times)}")
    out: dict[str, Any] = {
        "status": "ok",
        "step_time_s": summary(timer.times[args.warmup :]),
        "first_step_s": round(timer.times[0], 4),
        "fit_wall_s": round(wall, 2),
        "memory": mem,
        "first_loss": timer.losses[0],
    }
    if timer.profile is not None:
        out["_profile"] = timer.profile
    return out


def _latent(spec: ModelSpec, model: torch.nn.Module, size: Sequence[int]) -> list[int]:
    factor = model.latent_factor
    channels = model.first_stage.embedding_dim if spec.stage == "diffusion" else model.embedding_dim
    return [int(channels), *(int(s) // int(f) for s, f in zip(size, factor))]


def predicted_skip(prev: dict | None, voxels: int, n_steps: int, memory: PeakMemory, max_s: float) -> str | None:
    """Reason to skip a size, predicted linearly in voxels from the last measured (smaller) size."""
    if prev is None:
        return None
    ratio = voxels / prev["voxels"]
    t_pred = prev["step_time_s"]["median"] * ratio * n_steps
    peak_pred = prev["memory"]["baseline_mb"] + prev["memory"]["increase_mb"] * ratio
    limit = memory.limit_mb()
    src = f"(linear in voxels from {prev['size']})"
    if peak_pred > limit:
        return f"predicted peak memory {peak_pred:.0f} MB > {limit:.0f} MB available {src}"
    if t_pred > max_s:
        return f"predicted {t_pred:.0f} s for {n_steps} steps > --max-seconds {max_s:.0f} {src}"
    return None


def bench_training(args: argparse.Namespace, device: torch.device, profile_dir: Path | None) -> dict[str, Any]:
    """Training step time and peak memory of every model at every size, then its fast paths at one size."""
    memory = PeakMemory(device)
    results: list[dict[str, Any]] = []
    fast: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    n_steps = args.warmup + args.repeats
    for name in args.models:
        spec = MODELS[name]
        prev: dict | None = None
        measured: list[dict] = []
        for size in sorted(args.sizes, key=math.prod):
            row: dict[str, Any] = {"model": name, "stage": spec.stage, "config": spec.config, "size": size_str(size),
                                   "voxels": math.prod(size), "batch_size": args.batch_size, "precision": "32-true",
                                   "compile": False}  # fmt: skip
            results.append(row)
            reason = predicted_skip(prev, row["voxels"], n_steps, memory, args.max_seconds)
            if reason:
                row.update(status="skipped", reason=reason)
                log.info("training %s %s: skipped: %s", name, row["size"], reason)
                continue
            try:
                model, changes = build_model(spec, size, seed=args.seed)
                row["latent"] = size_str(_latent(spec, model, size))
                row["config_changes"] = changes
                row["params_m"] = round(trainable_params(model, spec) / 1e6, 3)
                bad = validity_error(model, spec, size)
                if bad:
                    row.update(status="skipped", reason=bad)
                    log.info("training %s %s: skipped: %s", name, row["size"], bad)
                    continue
                want_profile = profile_dir is not None and not measured
                res = train_steps(model, spec.stage, size, args, device, "32-true", memory, want_profile)
            except Exception as err:  # noqa: BLE001 - recorded, the benchmark goes on with the next measurement
                row.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
                log.warning("training %s %s failed: %s", name, row["size"], row["reason"])
                _free(device)
                continue
            prof = res.pop("_profile", None)
            if prof is not None and profile_dir is not None:
                profiles.append(write_profile(prof, device, profile_dir, f"train_{name}_{row['size']}"))
            row.update(res)
            log.info("training %s %s: %.3f s/step, peak %.0f MB", name, row["size"], row["step_time_s"]["median"],
                     row["memory"]["peak_mb"])  # fmt: skip
            prev = row
            measured.append(row)
            del model
            _free(device)
        if measured:
            fast.extend(training_fast_paths(args, device, spec, name, measured[-1], memory))
    return {"results": results, "fast_paths": fast, "memory_kind": memory.kind, "_profiles": profiles}


def trainable_params(model: torch.nn.Module, spec: ModelSpec) -> int:
    if spec.stage == "diffusion":
        return sum(p.numel() for p in model.denoiser.parameters())
    return sum(p.numel() for p in model.parameters())


def _free(device: torch.device) -> None:
    """Collect garbage and hand freed memory back (CUDA cache; glibc heap, so that RSS counts live memory only)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| in float64 (a is the reference)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def forward_outputs(model: torch.nn.Module, stage: str, batch: dict[str, torch.Tensor], eager: bool = False) -> list:
    """The network outputs a fast path must reproduce, on a fixed input.

    VQ-GAN: the encoder's continuous latent and the decoder's image from that latent (the codebook's nearest-code
    choice is left out: a rounding change can flip a near tie, which is no numerical error). Diffusion: the
    denoiser's prediction for a fixed noisy latent, timestep and label map. ``eager`` calls ``forward`` directly,
    bypassing a ``compile``d ``__call__`` (same weights, no compilation).
    """
    from dataset.contract import one_hot

    x = batch["image"]
    seg = one_hot(batch["label"], int(model.hparams.label_nc)).to(x.dtype)
    if stage == "vqgan":
        z = model.pre_vq_conv(model.encoder(x))
        dec_seg = seg if model.decoder_type == "spade" else None
        return [z, model._decode_codes(z, dec_seg)]
    g = torch.Generator(device=x.device).manual_seed(1)
    z0 = model.encode(x)
    noise = torch.randn(z0.shape, generator=g, device=x.device)
    t = torch.randint(0, model.schedule.num_train_timesteps, (z0.shape[0],), generator=g, device=x.device)
    x_t = model.schedule.add_noise(z0, noise, t)
    net = model.denoiser.forward if eager else model.denoiser
    return [net(x_t, t, seg)]


def output_check(ref: list[torch.Tensor], out: list[torch.Tensor], tol: float) -> dict[str, Any]:
    err = max(relative_error(a, b) for a, b in zip(ref, out))
    return {"output_rel_error": err, "tolerance": tol, "equal_within_tolerance": err <= tol}


def precision_check(spec: ModelSpec, size: Sequence[int], device: torch.device, precision: str, seed: int) -> dict:
    """fp32 vs autocast outputs of a freshly built model (same weights, same input)."""
    model, _ = build_model(spec, size, seed=seed)
    model = model.to(device).train()
    batch = {k: v[None].to(device) for k, v in RandomVolumes(1, size, int(model.hparams.label_nc), seed)[0].items()}
    with torch.no_grad():
        ref = forward_outputs(model, spec.stage, batch)
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
            out = forward_outputs(model, spec.stage, batch)
    return output_check(ref, out, OUTPUT_RTOL[precision])


def compile_check(model: torch.nn.Module, size: Sequence[int], device: torch.device, seed: int) -> dict:
    """Compiled vs eager denoiser on the model that was just trained compiled (training mode and grad on, as in the
    fit, so the compiled graph is reused rather than recompiled)."""
    model = model.to(device).train()
    batch = {k: v[None].to(device) for k, v in RandomVolumes(1, size, int(model.hparams.label_nc), seed)[0].items()}
    return output_check(
        forward_outputs(model, "diffusion", batch, eager=True),
        forward_outputs(model, "diffusion", batch),
        OUTPUT_RTOL["compile"],
    )


def training_fast_paths(
    args: argparse.Namespace, device: torch.device, spec: ModelSpec, name: str, base: dict, memory: PeakMemory
) -> list[dict[str, Any]]:
    """Mixed precision and ``compile`` against the fp32 row ``base`` (same size, same seed, same first batch).

    Each row has the step time and memory, the relative error of the network outputs against fp32 / eager (the
    "equal within tolerance" verdict) and, for information, the relative difference of the first training loss.
    """
    size = parse_size(base["size"])
    variants: list[tuple[str, bool]] = [("bf16-mixed", False)]
    if device.type == "cuda":
        variants.append(("16-mixed", False))
    variants.append(("32-true", True))
    out = []
    for precision, compile in variants:
        label = "compile" if compile else precision
        row: dict[str, Any] = {"model": name, "size": base["size"], "precision": precision, "compile": compile,
                               "option": "model.compile=true" if compile else f"trainer.precision={precision}",
                               "baseline_step_s": base["step_time_s"]["median"]}  # fmt: skip
        out.append(row)
        if compile and spec.stage != "diffusion":
            row.update(status="not applicable", reason="the VQ-GAN has no compile option (diffusion model only)")
            continue
        if compile and not args.compile:
            row.update(status="skipped", reason=args.compile_skip_reason)
            continue
        t_pred = base["step_time_s"]["median"] * (args.warmup + args.repeats)
        if t_pred > args.max_seconds:
            row.update(status="skipped", reason=f"predicted {t_pred:.0f} s (the fp32 steps) > --max-seconds")
            continue
        if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            row.update(status="skipped", reason="this GPU has no bf16")
            continue
        try:
            model, _ = build_model(spec, size, compile=compile, seed=args.seed)
            res = train_steps(model, spec.stage, size, args, device, precision, memory)
            res.update(compile_check(model, size, device, args.seed) if compile
                       else precision_check(spec, size, device, precision, args.seed))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - recorded
            row.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
            log.warning("fast path %s %s failed: %s", name, label, row["reason"])
            _free(device)
            continue
        row.update(res)
        row["speedup"] = round(base["step_time_s"]["median"] / res["step_time_s"]["median"], 3)
        a, b = base.get("first_loss"), res.get("first_loss")
        if a is not None and b is not None:
            row["first_loss_fp32"] = a
            row["first_loss_rel_diff"] = abs(b - a) / max(abs(a), 1e-12)
        log.info("fast path %s %s: %.3f s/step (x%.2f vs fp32), output rel. error %.1e", name, label,
                 res["step_time_s"]["median"], row["speedup"], row["output_rel_error"])  # fmt: skip
        del model
        _free(device)
    return out


def write_profile(prof: torch.profiler.profile, device: torch.device, folder: Path, name: str) -> dict[str, Any]:
    text, top = profile_table(prof, device)
    path = folder / f"{name}.txt"
    atomic_write(path, text + "\n")
    log.info("profile written to %s", path)
    return {"name": name, "table": str(path), "top_ops": top}


# ---------------------------------------------------------------------------------------------- sampling
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model scale [-1, 1] → [0, 1] (the image metrics' convention, data range 1)."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def real_volumes(model: torch.nn.Module, split: str, n: int, data_root: str | None) -> list[dict[str, Any]]:
    """The first n (image, label) pairs of the checkpoint's dataset split (the embedded mni152 for the demo)."""
    import hydra

    node = dict((model.hparams.get("data_info") or {}).get("datamodule") or {})
    if not node:
        raise ValueError("the checkpoint records no dataset (data_info.datamodule); cannot pair real volumes")
    if data_root is not None:
        node["dataset"] = {**node["dataset"], "root": data_root}
    ds = hydra.utils.instantiate(node, _convert_="all").dataset(split)
    return [ds[i] for i in range(min(n, len(ds)))]


def sample_one(model: torch.nn.Module, seg: torch.Tensor, sampler: str, steps: int | None, guidance: float | None,
               seed: int, device: torch.device) -> tuple[torch.Tensor, float]:  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    t0 = time.perf_counter()
    x = model.sample(seg, sampler=sampler, steps=steps, guidance=guidance, generator=gen)
    synchronize(device)
    return x, time.perf_counter() - t0


def bench_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time per volume and paired SSIM/PSNR of each sampler on each given checkpoint."""
    from dataset.contract import one_hot
    from evaluation.image_metrics import psnr, ssim3d
    from scripts.generate import load_model

    ckpts = [(key, path) for key, path in (("ckpt", args.ckpt), ("rflow_ckpt", args.rflow_ckpt)) if path]
    if not ckpts:
        return {"status": "skipped", "reason": "no --ckpt given: pass a short-trained diffusion checkpoint "
                "(train/train_diffusion.py experiment=mni152_diffusion_cpu) and, for rectified flow, --rflow-ckpt "
                "(model=diffusion_rflow)"}  # fmt: skip
    out: dict[str, Any] = {
        "status": "ok",
        "metric_convention": "images mapped from [-1, 1] to [0, 1]; data range 1; evaluation.image_metrics "
        "psnr and ssim3d (Gaussian window sigma 1.5, 11 taps or the largest odd size that fits)",
        "split": args.split,
        "checkpoints": {},
        "results": [],
    }
    for key, path in ckpts:
        model = load_model(Path(path), device)
        hp = model.hparams
        info = {"path": str(path), "objective": hp.objective, "prediction_type": hp.prediction_type,
                "num_train_timesteps": hp.num_train_timesteps, "samplers": list(model.schedule.samplers),
                "guidance": hp.guidance if args.guidance is None else args.guidance}  # fmt: skip
        out["checkpoints"][key] = info
        vols = real_volumes(model, args.split, args.sample_volumes, args.data_root)
        info["volumes"] = [str(v["id"]) for v in vols]
        segs = [one_hot(torch.as_tensor(v["label"])[None], model.label_nc).to(device) for v in vols]
        reals = [to_unit(torch.as_tensor(v["image"])[0]) for v in vols]
        # ceiling: the first stage's own reconstruction of the real volume
        ceiling = {"ssim": [], "psnr": []}
        for v, seg, real in zip(vols, segs, reals):
            rec = model.decode_latents(model.first_stage.encode(torch.as_tensor(v["image"])[None].to(device)), seg)
            ceiling["ssim"].append(ssim3d(to_unit(rec[0, 0]), real)[0])
            ceiling["psnr"].append(psnr(to_unit(rec[0, 0]), real))
        info["first_stage_ceiling"] = {k: statistics.fmean(v) for k, v in ceiling.items()}
        warm = "ddim" if "ddim" in model.schedule.samplers else "rflow"
        sample_one(model, segs[0], warm, 2, args.guidance, 0, device)  # warm-up (allocations, kernels)
        for sampler, steps in args.samplers:
            label = f"{sampler}-{hp.num_train_timesteps if sampler == 'ddpm' else steps}"
            row: dict[str, Any] = {"checkpoint": key, "sampler": sampler, "label": label,
                                   "steps": hp.num_train_timesteps if sampler == "ddpm" else steps}  # fmt: skip
            out["results"].append(row)
            if sampler not in model.schedule.samplers:
                hint = " (pass --rflow-ckpt: trained with model=diffusion_rflow)" if sampler == "rflow" else ""
                row.update(status="not applicable", reason=f"checkpoint objective {hp.objective!r} samples with "
                           f"{list(model.schedule.samplers)} only{hint}")  # fmt: skip
                continue
            times, ssims, psnrs = [], [], []
            for i, (seg, real) in enumerate(zip(segs, reals)):
                x, elapsed = sample_one(model, seg, sampler, steps, args.guidance, args.seed + i, device)
                times.append(elapsed)
                ssims.append(ssim3d(to_unit(x[0, 0]), real)[0])
                psnrs.append(psnr(to_unit(x[0, 0]), real))
            row.update(status="ok", time_per_volume_s=summary(times), ssim=statistics.fmean(ssims),
                       psnr=statistics.fmean(psnrs), ssim_per_volume=ssims, psnr_per_volume=psnrs)  # fmt: skip
            log.info("sampling %s %s: %.2f s/volume, SSIM %.3f, PSNR %.2f dB", key, label,
                     row["time_per_volume_s"]["median"], row["ssim"], row["psnr"])  # fmt: skip
        del model
        _free(device)
    ref = next((r for r in out["results"] if r["sampler"] == "ddpm" and r.get("status") == "ok"), None)
    if ref is not None:
        for r in out["results"]:
            if r.get("status") == "ok":
                r["speedup_vs_ddpm"] = ref["time_per_volume_s"]["median"] / r["time_per_volume_s"]["median"]
                r["ssim_minus_ddpm"] = r["ssim"] - ref["ssim"]
                r["psnr_minus_ddpm"] = r["psnr"] - ref["psnr"]
    return out


# ---------------------------------------------------------------------------------------------- generation
def generation_model(args: argparse.Namespace, device: torch.device, compile: bool = False) -> tuple[Any, dict]:
    """The checkpoint of ``--ckpt`` (else ``--rflow-ckpt``), or an untrained model of ``--gen-config``."""
    path = args.ckpt or args.rflow_ckpt
    if path:
        from scripts.generate import load_model

        model = load_model(Path(path), device, compile=compile)
        return model, {"source": str(path), "block": size_str(model.block_size)}
    block = args.gen_block or GEN_BLOCKS[args.gen_config]
    spec = MODELS[args.gen_config]
    torch.manual_seed(args.seed)  # the compiled copy gets the same weights as the baseline
    model, _ = build_diffusion(spec.config, spec.first_stage or "vq_gan_3d_tiny", block, compile=compile)
    with torch.no_grad():  # statistics of the untrained encoder's latents, so the normaliser is usable
        x = RandomVolumes(1, block, model.label_nc)[0]["image"][None]
        model.latent_norm.fit_std([model.first_stage.encode(x)])
    model = model.eval().to(device)
    return model, {"source": f"{args.gen_config} config, random weights (no --ckpt; time and memory do not depend "
                   "on the weights)", "block": size_str(block)}  # fmt: skip


def generate_once(model: Any, size: Sequence[int], settings: Any, memory: PeakMemory, device: torch.device,
                  workdir: Path) -> tuple[float, dict[str, float], np.ndarray]:  # fmt: skip
    """One ``generate`` call on a random label map of ``size``; returns time, memory and the volume."""
    from diffusion.generation.pipeline import LabelVolume, generate

    vol = LabelVolume(f"gen_{size_str(size)}", random_label(size, model.label_nc), np.eye(4), "benchmark")
    images: list[np.ndarray] = []
    memory.reset()
    synchronize(device)
    t0 = time.perf_counter()
    generate(model, [vol], workdir, settings, overwrite=True, progress=False,
             on_volume=lambda v, k, image, path: images.append(image))  # fmt: skip
    synchronize(device)
    return time.perf_counter() - t0, memory.result(), images[0]


def n_windows(size: Sequence[int], block: Sequence[int], factor: Sequence[int], overlap: float) -> int:
    from diffusion.generation.tiling import windows

    latent = tuple(s // f for s, f in zip(size, factor))
    return len(windows(latent, tuple(b // f for b, f in zip(block, factor)), overlap))  # type: ignore[arg-type]


def bench_generation(args: argparse.Namespace, device: torch.device, profile_dir: Path | None) -> dict[str, Any]:
    """Block-wise generation from one block to the full size; the time/memory exponents; fast paths."""
    from diffusion.generation.pipeline import GenerationSettings

    memory = PeakMemory(device)
    model, source = generation_model(args, device)
    block = tuple(model.block_size)
    sampler = args.gen_sampler or ("ddim" if "ddim" in model.schedule.samplers else "rflow")
    sizes = args.gen_sizes or [tuple(b * m for b, m in zip(block, mult)) for mult in args.gen_multiples]
    sizes = sorted(sizes, key=math.prod)
    settings = GenerationSettings(sampler=sampler, steps=args.gen_steps, seed=args.seed, resample=False)
    out: dict[str, Any] = {"status": "ok", "model": source, "sampler": sampler, "steps": args.gen_steps,
                           "overlap": settings.overlap, "guidance": float(model.hparams.guidance),
                           "memory_kind": memory.kind, "results": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as tmp:
        workdir = Path(tmp)
        generate_once(model, block, settings, memory, device, workdir)  # warm-up
        prev = None
        for size in sizes:
            row: dict[str, Any] = {
                "size": size_str(size),
                "voxels": math.prod(size),
                "windows": n_windows(size, block, model.latent_factor, settings.overlap),
            }
            out["results"].append(row)
            if prev is not None:
                ratio = row["windows"] / prev["windows"]
                t_pred = prev["time_s"]["median"] * ratio * args.gen_repeats
                mem = prev["memory"]
                peak_pred = mem["baseline_mb"] + mem["increase_mb"] * row["voxels"] / prev["voxels"]
                limit = memory.limit_mb()
                if peak_pred > limit or t_pred > args.max_seconds:
                    row["status"] = "skipped"
                    row["reason"] = (
                        f"predicted {t_pred:.0f} s (linear in windows) and {peak_pred:.0f} MB peak (linear in voxels)"
                        f" from {prev['size']}: over --max-seconds {args.max_seconds:.0f} or {limit:.0f} MB available"
                    )
                    log.info("generation %s: skipped: %s", row["size"], row["reason"])
                    continue
            if any(s < b for s, b in zip(size, block)) or any(s % f for s, f in zip(size, model.latent_factor)):
                row.update(status="skipped", reason=f"size must be >= the block {size_str(block)} and divisible by "
                           f"the latent factor {size_str(model.latent_factor)}")  # fmt: skip
                continue
            try:
                runs = [generate_once(model, size, settings, memory, device, workdir) for _ in range(args.gen_repeats)]
            except Exception as err:  # noqa: BLE001 - recorded
                row.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
                log.warning("generation %s failed: %s", row["size"], row["reason"])
                _free(device)
                continue
            row.update(status="ok", time_s=summary([r[0] for r in runs]),
                       memory=max((r[1] for r in runs), key=lambda m: m["peak_mb"]))  # fmt: skip
            row["time_per_megavoxel_s"] = row["time_s"]["median"] / (row["voxels"] / 1e6)
            log.info("generation %s (%d windows): %.2f s, peak %.0f MB", row["size"], row["windows"],
                     row["time_s"]["median"], row["memory"]["peak_mb"])  # fmt: skip
            prev = row
        ok = [r for r in out["results"] if r.get("status") == "ok"]
        out["full_size"] = ok[-1]["size"] if ok else None
        out["fit"] = growth_fits(ok)
        out["fast_paths"] = generation_fast_paths(args, device, model, block, settings, memory, workdir)
        if profile_dir is not None:
            out["_profiles"] = [profile_sampling_step(model, block, sampler, device, profile_dir)]
            multi = next((r for r in ok if r["windows"] > 1), ok[0] if ok else None)
            if multi is not None:
                prof = start_profiler(device)
                generate_once(model, parse_size(multi["size"]), settings, memory, device, workdir)
                prof.__exit__(None, None, None)
                out["_profiles"].append(write_profile(prof, device, profile_dir, f"generate_{multi['size']}"))
    return out


def growth_fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponents of time and memory against voxels (and time against windows) over the measured sizes."""
    if len({r["voxels"] for r in rows}) < 2:
        return {"status": "skipped", "reason": f"{len(rows)} measured size(s); a fit needs at least two"}
    vox = [r["voxels"] for r in rows]
    fits: dict[str, Any] = {"status": "ok", "sizes": len(rows)}
    fits["time_vs_voxels"] = fit_power_law(vox, [r["time_s"]["median"] for r in rows])
    incr = [max(r["memory"]["increase_mb"], 1e-3) for r in rows]
    fits["memory_increase_vs_voxels"] = fit_power_law(vox, incr)
    fits["peak_memory_vs_voxels"] = fit_power_law(vox, [r["memory"]["peak_mb"] for r in rows])
    if len({r["windows"] for r in rows}) >= 2:
        fits["time_vs_windows"] = fit_power_law([r["windows"] for r in rows], [r["time_s"]["median"] for r in rows])
    if len(rows) < 4:
        fits["note"] = f"only {len(rows)} sizes measured (at least four asked for)"
    return fits


def generation_fast_paths(args: argparse.Namespace, device: torch.device, model: Any, block: tuple[int, ...],
                          settings: Any, memory: PeakMemory, workdir: Path) -> list[dict[str, Any]]:  # fmt: skip
    """``--precision bf16`` (and 16 on CUDA) and ``--compile`` of scripts/generate.py vs fp32, on one block."""
    from dataclasses import replace

    size = tuple(block)
    base_runs = [generate_once(model, size, settings, memory, device, workdir) for _ in range(args.gen_repeats)]
    base_t = statistics.median(r[0] for r in base_runs)
    base_img = base_runs[0][2]
    out = [{"option": "--precision 32", "size": size_str(size), "status": "ok", "time_s": base_t,
            "memory": base_runs[0][1]}]  # fmt: skip
    variants = [("bf16", False)] + ([("16", False)] if device.type == "cuda" else []) + [("32", True)]
    for precision, compile in variants:
        label = "compile" if compile else precision
        row: dict[str, Any] = {"option": "--compile" if compile else f"--precision {precision}",
                               "size": size_str(size)}  # fmt: skip
        out.append(row)
        if compile and not args.compile:
            row.update(status="skipped", reason=args.compile_skip_reason)
            continue
        try:
            m = generation_model(args, device, compile=True)[0] if compile else model
            s = replace(settings, precision=precision)
            first = time.perf_counter()
            generate_once(m, size, s, memory, device, workdir)  # warm-up: compiles on the first call
            first = time.perf_counter() - first
            runs = [generate_once(m, size, s, memory, device, workdir) for _ in range(args.gen_repeats)]
        except Exception as err:  # noqa: BLE001 - recorded
            row.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
            log.warning("generation fast path %s failed: %s", label, row["reason"])
            continue
        t = statistics.median(r[0] for r in runs)
        diff = np.abs(runs[0][2].astype(np.float64) - base_img.astype(np.float64))
        row.update(status="ok", time_s=t, first_call_s=first, speedup=base_t / t, memory=runs[0][1],
                   max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), tolerance=IMAGE_ATOL[label],
                   equal_within_tolerance=float(diff.mean()) <= IMAGE_ATOL[label])  # fmt: skip
        log.info("generation fast path %s: %.2f s (x%.2f), mean |diff| %.2e", label, t, row["speedup"],
                 row["mean_abs_diff"])  # fmt: skip
    return out


def profile_sampling_step(model: Any, block: Sequence[int], sampler: str, device: torch.device,
                          folder: Path) -> dict[str, Any]:  # fmt: skip
    """Profile one denoising step (guided network call + scheduler update) at the block size."""
    from dataset.contract import one_hot
    from diffusion.guidance import GuidedDenoiser

    seg = one_hot(torch.as_tensor(random_label(block, model.label_nc))[None, None], model.label_nc).to(device)
    shape = (1, model.first_stage.embedding_dim, *(b // f for b, f in zip(block, model.latent_factor)))
    noise = torch.randn(shape, device=device)
    denoise = GuidedDenoiser(model.ema.module, seg.float(), float(model.hparams.guidance))
    with torch.no_grad():
        model.schedule.sample(denoise, noise, sampler, 2)  # warm-up
        prof = start_profiler(device)
        model.schedule.sample(denoise, noise, sampler, 1)
        synchronize(device)
        prof.__exit__(None, None, None)
    return write_profile(prof, device, folder, f"sample_step_{sampler}_{size_str(block)}")


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _load(v: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in v) if v else "–"


def _t(row: dict, key: str) -> str:
    return _fmt(row[key]["median"]) if isinstance(row.get(key), dict) else "–"


def _why(row: dict) -> str:
    return f"{row.get('status')}: {row.get('reason', '')}".replace("|", "/")


def markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a report (also written beside the JSON)."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    lines = [
        "# Med-LSDM benchmark",
        "",
        f"{report['created']} · device **{s['device']}** · {m['cpu_model']} ({m['cpu_count']} cores, "
        f"{m['torch_threads']} torch threads) · RAM {m['ram_total_mb']} MB · GPU {gpu} · load average "
        f"{_load(m.get('load_average_start'))} at start, {_load(m.get('load_average_end'))} at the end",
        f"python {v['python']} · torch {v['torch']} · pytorch_lightning {v['pytorch_lightning']} · monai {v['monai']}"
        f" · {'quick' if s['quick'] else 'full'} run: warm-up {s['warmup']}, repeats {s['repeats']}, batch "
        f"{s['batch_size']} · total {report['total_time_s']:.0f} s",
        "",
    ]
    tr = report.get("training", {})
    if tr.get("results"):
        lines += ["## Training step (fp32)", "", f"Memory: {tr['memory_kind']}. Params: VQ-GAN with its "
                  "discriminators, diffusion: the denoiser. GAN terms on (discriminator_iter_start=0).", "",
                  "| model | image | latent | params (M) | step s (median) | first step s | peak MB | +MB | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in tr["results"]:
            mem = r.get("memory") or {}
            note = "" if r.get("status") == "ok" else _why(r)
            lines.append(f"| {r['model']} | {r['size']} | {r.get('latent', '–')} | {_fmt(r.get('params_m'))} | "
                         f"{_t(r, 'step_time_s')} | {_fmt(r.get('first_step_s'))} | {_fmt(mem.get('peak_mb'))} | "
                         f"{_fmt(mem.get('increase_mb'))} | {note} |")  # fmt: skip
        lines += ["", "### Fast paths (training)", "",
                  "| model | image | option | step s | first step s | fp32 step s | speedup | output rel. error "
                  "| equal | first-loss rel. diff | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in tr.get("fast_paths", []):
            note = "" if r.get("status") == "ok" else _why(r)
            eq = {True: "yes", False: "NO"}.get(r.get("equal_within_tolerance"), "–")
            lines.append(f"| {r['model']} | {r['size']} | {r['option']} | {_t(r, 'step_time_s')} | "
                         f"{_fmt(r.get('first_step_s'))} | {_fmt(r['baseline_step_s'])} | {_fmt(r.get('speedup'))} | "
                         f"{_fmt(r.get('output_rel_error'))} | {eq} | {_fmt(r.get('first_loss_rel_diff'))} | "
                         f"{note} |")  # fmt: skip
        lines.append("")
    sa = report.get("sampling", {})
    lines += ["## Sampling", ""]
    if sa.get("status") != "ok":
        lines += [f"Skipped: {sa.get('reason', 'not run')}", ""]
    else:
        for key, c in sa["checkpoints"].items():
            ceil = c["first_stage_ceiling"]
            lines.append(f"- `{key}`: {c['path']} (objective {c['objective']}, T {c['num_train_timesteps']}, "
                         f"guidance {c['guidance']}, {len(c['volumes'])} {sa['split']} volume(s); VQ-GAN "
                         f"reconstruction ceiling SSIM {ceil['ssim']:.3f}, PSNR {ceil['psnr']:.2f} dB)")  # fmt: skip
        lines += ["", f"Metrics: {sa['metric_convention']}.", "",
                  "| ckpt | sampler | s / volume | speedup vs DDPM | SSIM | PSNR dB | ΔSSIM | ΔPSNR | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in sa["results"]:
            note = "" if r.get("status") == "ok" else _why(r)
            lines.append(
                f"| {r['checkpoint']} | {r['label']} | {_t(r, 'time_per_volume_s')} | "
                f"{_fmt(r.get('speedup_vs_ddpm'))} | {_fmt(r.get('ssim'))} | {_fmt(r.get('psnr'))} | "
                f"{_fmt(r.get('ssim_minus_ddpm'))} | {_fmt(r.get('psnr_minus_ddpm'))} | {note} |"
            )
        lines.append("")
    ge = report.get("generation", {})
    lines += ["## Block-wise generation", ""]
    if ge.get("status") != "ok":
        lines += [f"Skipped: {ge.get('reason', 'not run')}", ""]
    else:
        lines += [f"Model: {ge['model']['source']}; block {ge['model']['block']}; {ge['sampler']} "
                  f"{ge['steps']} steps, overlap {ge['overlap']}, guidance {ge['guidance']}.",
                  f"Memory: {ge['memory_kind']}.", "",
                  "| size | voxels | windows | time s | s / Mvoxel | peak MB | +MB | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in ge["results"]:
            mem = r.get("memory") or {}
            note = "" if r.get("status") == "ok" else _why(r)
            lines.append(f"| {r['size']} | {r['voxels']} | {r['windows']} | {_t(r, 'time_s')} | "
                         f"{_fmt(r.get('time_per_megavoxel_s'))} | {_fmt(mem.get('peak_mb'))} | "
                         f"{_fmt(mem.get('increase_mb'))} | {note} |")  # fmt: skip
        fit = ge.get("fit", {})
        lines.append("")
        if fit.get("status") == "ok":
            tv, mv = fit["time_vs_voxels"], fit["memory_increase_vs_voxels"]
            lines.append(f"Growth over {fit['sizes']} sizes (log-log least squares): time ~ voxels^"
                         f"**{tv['exponent']:.2f}** (R² {tv['r2']:.3f}); memory increase ~ voxels^"
                         f"**{mv['exponent']:.2f}** (R² {mv['r2']:.3f}); peak memory ~ voxels^"
                         f"{fit['peak_memory_vs_voxels']['exponent']:.2f}.")  # fmt: skip
            if "time_vs_windows" in fit:
                lines.append(f"Time ~ windows^{fit['time_vs_windows']['exponent']:.2f} (windows overlap by "
                             f"{ge['overlap']}, so at small sizes they grow faster than voxels).")  # fmt: skip
            if fit.get("note"):
                lines.append(f"Note: {fit['note']}.")
        else:
            lines.append(f"Growth fit: {fit.get('reason', 'not available')}.")
        lines += ["", f"Full size measured: {ge.get('full_size')}.", "", "### Fast paths (generation)", "",
                  "| option | size | time s | speedup | first call s | mean abs diff | max abs diff | equal | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in ge.get("fast_paths", []):
            note = "" if r.get("status") == "ok" else _why(r)
            eq = {True: "yes", False: "NO"}.get(r.get("equal_within_tolerance"), "–")
            lines.append(f"| {r['option']} | {r['size']} | {_fmt(r.get('time_s'))} | {_fmt(r.get('speedup'))} | "
                         f"{_fmt(r.get('first_call_s'))} | {_fmt(r.get('mean_abs_diff'))} | "
                         f"{_fmt(r.get('max_abs_diff'))} | {eq} | {note} |")  # fmt: skip
        lines.append("")
    profiles = report.get("profiles") or []
    if profiles:
        lines += ["## Profiles (top ops by self CPU time)", ""]
        for p in profiles:
            ops = ", ".join(f"{o['op']} {o['self_cpu_pct']}%" for o in p["top_ops"][:5])
            lines.append(f"- **{p['name']}** ({p['table']}): {ops}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="JSON report (the Markdown summary goes beside it, .md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 warm-up + 2 repeats, no compile")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="training image sizes, N or DxHxW (default: 16 32 32x64x64 32x128x128 32x256x256; quick: 16)",
    )
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None, help="models to train (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="training batch size (the paper runs use 1-2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip a measurement predicted to take longer (default 600; quick 60)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure torch.compile (default: on, off with --quick: cold CPU compiles take minutes)",
    )
    p.add_argument("--ckpt", type=Path, default=None, help="short-trained diffusion checkpoint (sampler section)")
    p.add_argument("--rflow-ckpt", type=Path, default=None, help="checkpoint trained with model=diffusion_rflow")
    p.add_argument(
        "--samplers",
        nargs="+",
        type=parse_sampler,
        default=None,
        help="ddpm (all T steps), ddim:N, rflow:N (default: ddpm ddim:25 ddim:50 ddim:100 rflow:30)",
    )
    p.add_argument("--sample-volumes", type=int, default=None, help="real volumes paired per sampler (4; quick 2)")
    p.add_argument("--split", default="test", help="dataset split of the real volumes")
    p.add_argument("--data-root", default=None, help="override the checkpoint's dataset root (e.g. data/mni152)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight (default: the checkpoint's)")
    p.add_argument(
        "--gen-config",
        choices=sorted(GEN_BLOCKS),
        default=None,
        help="untrained model for generation without --ckpt (default: diffusion on cuda, else tiny)",
    )
    p.add_argument("--gen-block", type=parse_size, default=None, help="its training block (default per config)")
    p.add_argument(
        "--gen-sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="label-map sizes (default: the block times 1x1x1 1x1x2 1x2x2 2x2x2 2x4x4 4x4x4; quick: 4)",
    )
    p.add_argument("--gen-steps", type=int, default=None, help="sampler steps per generated volume (10; quick 2)")
    p.add_argument("--gen-sampler", choices=("ddim", "rflow", "ddpm"), default=None, help="default: ddim (or rflow)")
    p.add_argument("--gen-repeats", type=int, default=None, help="timed runs per generation size (2; quick 1)")
    p.add_argument(
        "--skip", nargs="+", choices=("training", "sampling", "generation"), default=[], help="sections to leave out"
    )
    p.add_argument("--profile", type=Path, default=None, metavar="DIR", help="write torch.profiler tables here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.sizes = args.sizes or list(QUICK_SIZES if q else DEFAULT_SIZES)
    args.models = args.models or list(MODELS)
    args.warmup = (1 if q else 2) if args.warmup is None else args.warmup
    args.repeats = (2 if q else 5) if args.repeats is None else args.repeats
    args.max_seconds = (60.0 if q else 600.0) if args.max_seconds is None else args.max_seconds
    args.samplers = args.samplers or [parse_sampler(s) for s in DEFAULT_SAMPLERS]
    args.sample_volumes = (2 if q else 4) if args.sample_volumes is None else args.sample_volumes
    args.gen_steps = (2 if q else 10) if args.gen_steps is None else args.gen_steps
    args.gen_repeats = (1 if q else 2) if args.gen_repeats is None else args.gen_repeats
    args.gen_multiples = list(QUICK_GEN_MULTIPLES if q else GEN_MULTIPLES)
    if args.compile is None:
        args.compile = not q
        args.compile_skip_reason = "off in --quick (a cold inductor compile takes minutes on a CPU); pass --compile"
    else:
        args.compile_skip_reason = "--no-compile"
    for key in ("batch_size", "repeats", "sample_volumes", "gen_steps", "gen_repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def resolve_device(name: str | None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def settings_record(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device), "quick": args.quick, "sizes": [size_str(s) for s in args.sizes], "models": args.models,
        "batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats,
        "max_seconds": args.max_seconds, "compile": args.compile, "seed": args.seed,
        "samplers": [f"{n}:{s}" if s else n for n, s in args.samplers], "sample_volumes": args.sample_volumes,
        "split": args.split, "gen_steps": args.gen_steps, "gen_repeats": args.gen_repeats,
        "gen_sizes": [size_str(s) for s in args.gen_sizes] if args.gen_sizes else None,
        "gen_multiples": [size_str(m) for m in args.gen_multiples], "skip": args.skip,
        "training_data": "random image in [-1, 1] and blocky random label map (cost does not depend on content)",
        "timing": "wall clock, CUDA synchronised; median over repeats after warm-up",
        "output_rtol": OUTPUT_RTOL, "image_atol": IMAGE_ATOL,
    }  # fmt: skip


def setup_logging() -> None:
    """Rich (or plain) logging to stderr unless the host (pytest, a caller) already configured the root logger."""
    if not logging.getLogger().handlers:
        try:
            from rich.console import Console
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False)
            fmt = "%(message)s"
        except ImportError:  # rich is a requirement; stay usable without it
            handler, fmt = logging.StreamHandler(), "%(asctime)s %(levelname)s %(name)s: %(message)s"
        logging.basicConfig(level=logging.INFO, format=fmt, handlers=[handler])
    log.setLevel(logging.INFO)
    import pytorch_lightning  # noqa: F401 - sets its loggers to INFO on import; quieten them after that

    quiet = ("pytorch_lightning", "lightning_fabric", "lightning", "torch._dynamo", "torch._inductor", "diffusion",
             "dataset", "vq_gan_3d")  # fmt: skip
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("vq_gan_3d.perceptual").setLevel(logging.ERROR)  # random-VGG note: recorded per row instead


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every section; returns the report (also what is written)."""
    import warnings

    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_info(device),
        "versions": versions(),
        "settings": settings_record(args, device),
        "section_time_s": {},
    }
    if args.gen_config is None:
        args.gen_config = "diffusion" if device.type == "cuda" else "diffusion_tiny"
    report["settings"]["gen_config"] = args.gen_config
    profile_dir = args.profile
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    profiles: list[dict] = []
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("training", lambda: bench_training(args, device, profile_dir)),
        ("sampling", lambda: bench_sampling(args, device)),
        ("generation", lambda: bench_generation(args, device, profile_dir)),
    ]
    for name, fn in sections:
        if name in args.skip:
            report[name] = {"status": "skipped", "reason": "--skip"}
            continue
        log.info("== %s", name)
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - a failed section is reported, the others still run
            log.exception("%s failed", name)
            result = {"status": "error", "reason": f"{type(err).__name__}: {err}"[:1000]}
        profiles += result.pop("_profiles", [])
        report[name] = result
        report["section_time_s"][name] = round(time.perf_counter() - t0, 1)
    report["profiles"] = profiles
    report["machine"]["load_average_end"] = load_average()
    report["total_time_s"] = round(time.perf_counter() - t_start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    md_path = args.out.with_suffix(".md")
    existing = [str(p) for p in (args.out, md_path) if p.exists()]
    if existing and not args.overwrite:
        log.error("%s exist(s); pass --overwrite to replace", ", ".join(existing))
        return 2
    try:
        report = run(args)
    except ValueError as err:
        log.error("%s", err)
        return 2
    report = json_safe(report)
    text = markdown(report)
    atomic_write(args.out, json.dumps(report, indent=2) + "\n")
    atomic_write(md_path, text + "\n")
    sys.stdout.write(text + "\n")
    log.info("wrote %s and %s (%.0f s)", args.out, md_path, report["total_time_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
