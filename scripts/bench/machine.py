"""The machine record (CPU, cores, threads, RAM, GPU, versions, commit, date) and the peak-memory probe."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import math
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch


def proc_kb(field: str, path: str = "/proc/self/status") -> int | None:
    """A ``field: N kB`` value of a /proc file (None where there is no /proc or no such field)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
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
    """CPU model, cores, threads, RAM, GPU (if any) and the date of the run."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ram_total_mb": round((proc_kb("MemTotal", "/proc/meminfo") or 0) / 1024) or None,
        "ram_available_mb": round((proc_kb("MemAvailable", "/proc/meminfo") or 0) / 1024) or None,
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
    """The commit, and the versions of Python and of the libraries whose speed the numbers depend on."""
    import monai
    import pytorch_lightning as pl

    return {
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes): what a ``--compare`` compares across."""
    root = Path(__file__).resolve().parents[2]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = {"cwd": root, "capture_output": True, "text": True, "timeout": 10, "check": True}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    return None


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
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or the process's peak RSS on the CPU (VmHWM, reset
    through /proc/self/clear_refs; where that is impossible, ru_maxrss since the start, so only increases count)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or self._reset_rss()
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated (tensors only; the CUDA context is not included)"
        else:
            how = "VmHWM, reset before each measurement" if self.resettable else "ru_maxrss: only increases count"
            self.kind = f"process peak RSS ({how})"
        self.baseline_mb = 0.0

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return proc_kb("VmHWM") is not None
        except OSError:
            return False

    def current_mb(self) -> float:
        """Memory in use now (CUDA tensors, or this process's RSS)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return (proc_kb("VmRSS") or 0) / 1024

    def reset(self) -> None:
        """Start a measurement: free what can be freed, reset the peak, remember the baseline."""
        free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_rss()
        self.baseline_mb = self.current_mb()

    def result(self) -> dict[str, float]:
        """``{"peak_mb", "baseline_mb", "increase_mb"}`` of the measurement since :meth:`reset`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.resettable:
            peak = (proc_kb("VmHWM") or 0) / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        increase = max(peak - self.baseline_mb, 0.0)
        return {
            "peak_mb": round(peak, 1),
            "baseline_mb": round(self.baseline_mb, 1),
            "increase_mb": round(increase, 1),
        }

    def limit_mb(self) -> float:
        """Memory a measurement may predictably reach: 90 % of the GPU, or this RSS plus 85 % of MemAvailable."""
        if self.device.type == "cuda":
            return 0.9 * torch.cuda.get_device_properties(self.device).total_memory / 2**20
        avail = proc_kb("MemAvailable", "/proc/meminfo")
        return self.current_mb() + 0.85 * avail / 1024 if avail is not None else math.inf
