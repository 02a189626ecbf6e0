"""torch.profiler tables (top ops by self CPU time) of training and sampling steps."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dataset.files import atomic_write_text
from scripts.bench.common import random_label, size_str
from scripts.bench.machine import synchronize

log = logging.getLogger("benchmark")


def start_profiler(device: torch.device) -> torch.profiler.profile:
    """A started profiler of CPU (and CUDA) activity; the caller ends it with ``__exit__``."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=acts)
    prof.__enter__()
    return prof


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
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
            "self_cpu_pct": round(100 * e.self_cpu_time_total / total, 1),
            "calls": e.count,
        }
        for e in top
    ]
    return text, records


def write_profile(prof: torch.profiler.profile, device: torch.device, folder: Path, name: str) -> dict[str, Any]:
    """Write the table of ``prof`` to ``folder/<name>.txt``; return its record for the report."""
    text, top = profile_table(prof, device)
    path = folder / f"{name}.txt"
    atomic_write_text(path, text + "\n")
    log.info("profile written to %s", path)
    return {"name": name, "table": str(path), "top_ops": top}


def profile_sampling_step(
    model: Any, block: Sequence[int], sampler: str, device: torch.device, folder: Path
) -> dict[str, Any]:
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
