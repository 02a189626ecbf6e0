"""What every benchmark section shares: constants, value parsers, statistics, the training data, one guarded
measurement, the denoise/decode split of a sampling call, the machine record and the peak-memory probe."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("benchmark")
SCHEMA = "med-lsdm-benchmark/4"
PAPER_BLOCK = (32, 256, 256)  # image block of the paper; latent 8x8x64x64 with the [4, 4, 4] VQ-GAN
DEFAULT_SIZES = ((16, 16, 16), (32, 32, 32), (32, 64, 64), (32, 128, 128), PAPER_BLOCK)
QUICK_SIZES = ((16, 16, 16),)
DEFAULT_SAMPLERS = ("ddpm", "ddim:25", "ddim:50", "ddim:100", "rflow:30")
GEN_MULTIPLES = ((1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 4, 4), (4, 4, 4))
# a fast path gives "the same result" as fp32 when the relative L2 error of the network outputs (training) / the mean
# absolute voxel difference of the generated volume in [-1, 1] (generation) stays within these
OUTPUT_RTOL = {"bf16-mixed": 5e-2, "16-mixed": 1e-2, "compile": 1e-4}
IMAGE_ATOL = {"bf16": 5e-2, "16": 2e-2, "compile": 1e-3}
NO_COMPILE = "--no-compile or --quick (a cold compile takes minutes)"  # why compile was not measured


@dataclass(frozen=True)
class ModelSpec:
    """A model to train: its stage, ``config/model/<config>.yaml`` and, for stage 2, its first stage's config."""

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


def parse_size(text: str) -> tuple[int, int, int]:
    """``"32"`` → (32, 32, 32); ``"32x256x256"`` → (32, 256, 256)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size must be N or DxHxW with positive ints, got {text!r}")
    return tuple(int(p) for p in parts * (3 // len(parts)))  # type: ignore[return-value]


def size_str(size: Sequence[int]) -> str:
    """(32, 64, 64) → ``"32x64x64"``."""
    return "x".join(str(int(s)) for s in size)


def parse_sampler(text: str) -> tuple[str | None, str, int | None]:
    """``[CKPT=]SAMPLER[:STEPS]``: ``"ddpm"`` → (None, "ddpm", None) (all T steps); ``"student=rflow:4"`` →
    ("student", "rflow", 4): a row of that checkpoint only."""
    ckpt, _, spec = text.rpartition("=")
    name, _, steps = spec.partition(":")
    if name not in ("ddpm", "ddim", "rflow") or (steps and (not steps.isdigit() or int(steps) < 1)):
        raise argparse.ArgumentTypeError(f"sampler must be [CKPT=]ddpm, ddim:N or rflow:N, got {text!r}")
    if name == "ddpm" and steps:
        raise argparse.ArgumentTypeError("ddpm always runs all T steps: write 'ddpm'")
    return ckpt or None, name, int(steps) if steps else None


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log y = k log x + log c``: ``{"exponent": k, "coefficient": c, "r2", "points"}``.

    Raises:
        ValueError: unpaired values, a single distinct x or a non-positive value.
    """
    if len(x) != len(y) or len(set(x)) < 2 or min(*x, *y) <= 0:
        raise ValueError(f"need (x, y) pairs of positive values with two distinct x, got {list(x)} and {list(y)}")
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    k, logc = np.polyfit(lx, ly, 1)
    r2 = float(np.corrcoef(lx, ly)[0, 1] ** 2) if np.ptp(ly) > 0 else 1.0  # r² of a line fit: squared correlation
    return {"exponent": float(k), "coefficient": float(math.exp(logc)), "r2": r2, "points": len(x)}


def error_reason(err: BaseException, limit: int = 500) -> str:
    """``"TypeName: message"``, cut to ``limit`` characters (what a failed row records)."""
    return f"{type(err).__name__}: {err}"[:limit]


def measured(row: dict[str, Any], what: str, fn: Callable[[], dict[str, Any]], device: torch.device) -> bool:
    """Fill ``row`` with one measurement (``status`` ok and ``fn()``'s values); a failure (out of memory, no
    compiler) becomes ``status`` error with its reason and the benchmark goes on. True when it was measured."""
    try:
        row.update({"status": "ok", **fn()})
        return True
    except Exception as err:  # noqa: BLE001 - recorded in the row, the next measurement runs
        row.update(status="error", reason=error_reason(err))
        log.warning("%s failed: %s", what, row["reason"])
        return False
    finally:
        free_memory(device)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| in float64 (a is the reference)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


class Volumes(torch.utils.data.Dataset):
    """``n`` training samples in the data contract: ``samples`` in turn when given (a dataset's real volumes: the
    SPADE lookup's cost grows with their maps' distinct neighbourhoods), else a seeded blocky K-class label
    (1, D, H, W) int64 of ``size`` and an image (1, D, H, W) in [-1, 1] derived from it."""

    def __init__(
        self, n: int, size: Sequence[int], label_nc: int, seed: int = 0, samples: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.n, self.size, self.label_nc, self.seed, self.samples = n, tuple(size), label_nc, seed, list(samples)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.samples:
            return self.samples[i % len(self.samples)]
        g = torch.Generator().manual_seed(self.seed + i)
        coarse = torch.randint(0, self.label_nc, tuple(max(s // 4, 1) for s in self.size), generator=g)
        label = torch.nn.functional.interpolate(coarse[None, None].float(), size=self.size).long()[0]
        image = (label.float() / max(self.label_nc - 1, 1)) * 1.6 - 0.8 + 0.1 * torch.randn(label.shape, generator=g)
        return {"image": image.clamp(-1, 1), "label": label}


@contextlib.contextmanager
def timed_sampling(model: Any, device: torch.device) -> Iterator[dict[str, float]]:
    """Wall seconds of the ``with`` block (CUDA synchronised: ``"seconds"``) and, within it, of the sampler loop
    (``model.schedule.sample``: ``"denoise_s"``) and of decoding (``model.first_stage.decode``, where every decoding
    path ends: ``"decode_s"``); instance attributes shadow the methods meanwhile, so the product runs unchanged."""
    seconds = {"seconds": 0.0, "denoise_s": 0.0, "decode_s": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def call(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[key] += time.perf_counter() - t0

        return call

    model.schedule.sample = timed(model.schedule.sample, "denoise_s")
    model.first_stage.decode = timed(model.first_stage.decode, "decode_s")
    synchronize(device)
    t0 = time.perf_counter()
    try:
        yield seconds
    finally:
        synchronize(device)
        seconds["seconds"] = time.perf_counter() - t0
        del model.schedule.sample, model.first_stage.decode


# ------------------------------------------------------------------------------------------------ the machine
def proc_kb(field: str, path: str = "/proc/self/status") -> int:
    """A ``field: N kB`` value of a /proc file (the benchmark runs on Linux)."""
    with open(path, encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def load_average() -> list[float]:
    """1/5/15-minute load averages: other processes on a shared machine slow every number down."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, RAM, GPU (if any) and the date of the run."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "hostname": platform.node(),
        "platform": platform.platform(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ram_total_mb": round(proc_kb("MemTotal", "/proc/meminfo") / 1024),
        "load_average_start": load_average(), "gpu": None,
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device if device.type == "cuda" else 0)
        info["gpu"] = {"name": props.name, "memory_mb": round(props.total_memory / 2**20),
                       "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return info


def versions() -> dict[str, str | None]:
    """The commit (``+dirty`` with uncommitted changes: what ``--compare`` compares across) and the versions of
    Python and of the libraries whose speed the numbers depend on."""
    import monai
    import pytorch_lightning as pl

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = {"cwd": Path(__file__).resolve().parents[2], "capture_output": True, "text": True, "check": True}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], timeout=10, **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=10, **run).stdout
        commit += "+dirty" if dirty.strip() else ""
    return {"commit": commit, "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "monai": monai.__version__, "numpy": np.__version__}  # fmt: skip


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock time covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand freed memory back (CUDA cache; glibc heap, so that RSS counts live memory only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or on the CPU the process's peak RSS (VmHWM, reset
    through /proc/self/clear_refs before each measurement)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.baseline_mb, self.cuda = device, 0.0, device.type == "cuda"
        self.kind = "process peak RSS (VmHWM, reset before each measurement)"
        if self.cuda:
            self.kind = "torch.cuda.max_memory_allocated (tensors only; the CUDA context is not included)"

    def current_mb(self) -> float:
        """Memory in use now (CUDA tensors, or this process's RSS)."""
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.cuda else proc_kb("VmRSS") / 1024

    def reset(self) -> None:
        """Start a measurement: free what can be freed, reset the peak, remember the baseline."""
        free_memory(self.device)
        synchronize(self.device)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
        self.baseline_mb = self.current_mb()

    def result(self) -> dict[str, float]:
        """``{"peak_mb", "baseline_mb", "increase_mb"}`` of the measurement since :meth:`reset`."""
        synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else proc_kb("VmHWM") / 1024
        inc = max(peak - self.baseline_mb, 0.0)
        return {"peak_mb": round(peak, 1), "baseline_mb": round(self.baseline_mb, 1), "increase_mb": round(inc, 1)}

    def limit_mb(self) -> float:
        """Memory a measurement may predictably reach: 90 % of the GPU, or this RSS plus 85 % of MemAvailable."""
        if self.cuda:
            return 0.9 * torch.cuda.get_device_properties(self.device).total_memory / 2**20
        return self.current_mb() + 0.85 * proc_kb("MemAvailable", "/proc/meminfo") / 1024

    def over_budget(self, prev: dict[str, Any], seconds: float, scale: float, max_s: float) -> str | None:
        """Why a measurement predicted to take ``seconds`` and ``scale`` times the memory increase of the measured
        row ``prev`` is skipped (more than :meth:`limit_mb` or ``--max-seconds``), else None."""
        peak = prev["memory"]["baseline_mb"] + prev["memory"]["increase_mb"] * scale
        if peak > self.limit_mb() or seconds > max_s:
            return (f"predicted {seconds:.0f} s and {peak:.0f} MB peak from {prev['size']}: over --max-seconds "
                    f"{max_s:.0f} or {self.limit_mb():.0f} MB available")  # fmt: skip
        return None
