"""Generation fast paths (``scripts/generate.py --precision bf16 / --compile`` against fp32) and profiles."""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.bench.common import IMAGE_ATOL, error_reason, parse_size, size_str
from scripts.bench.generation import generate_once, generation_model
from scripts.bench.machine import PeakMemory
from scripts.bench.profiling import profile_sampling_step, start_profiler, write_profile

log = logging.getLogger("benchmark")


def generation_profiles(
    model: Any,
    block: tuple[int, ...],
    sampler: str,
    settings: Any,
    ok: list[dict],
    memory: PeakMemory,
    device: torch.device,
    workdir: Path,
    folder: Path,
) -> list[dict[str, Any]]:
    """A sampling step at the block size and one generation with several windows."""
    profiles = [profile_sampling_step(model, block, sampler, device, folder)]
    multi = next((r for r in ok if (r["windows"] or 1) > 1), ok[-1] if ok else None)
    if multi is not None:
        prof = start_profiler(device)
        generate_once(model, parse_size(multi["size"]), settings, memory, device, workdir)
        prof.__exit__(None, None, None)
        profiles.append(write_profile(prof, device, folder, f"generate_{multi['size']}"))
    return profiles


def generation_fast_paths(
    args: argparse.Namespace,
    device: torch.device,
    model: Any,
    block: tuple[int, ...],
    settings: Any,
    memory: PeakMemory,
    workdir: Path,
) -> list[dict[str, Any]]:
    """``--precision bf16`` (and 16 on CUDA) and ``--compile`` of scripts/generate.py vs fp32, on one block."""
    size = tuple(block)
    base_runs = [generate_once(model, size, settings, memory, device, workdir) for _ in range(args.gen_repeats)]
    base_t = statistics.median(r[0] for r in base_runs)
    base_img = base_runs[0][2]
    out = [
        {
            "option": "--precision 32",
            "size": size_str(size),
            "status": "ok",
            "time_s": base_t,
            "memory": base_runs[0][1],
        }
    ]
    variants = [("bf16", False)] + ([("16", False)] if device.type == "cuda" else []) + [("32", True)]
    for precision, compile in variants:
        label = "compile" if compile else precision
        row: dict[str, Any] = {
            "option": "--compile" if compile else f"--precision {precision}",
            "size": size_str(size),
        }
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
            row.update(status="error", reason=error_reason(err))
            log.warning("generation fast path %s failed: %s", label, row["reason"])
            continue
        t = statistics.median(r[0] for r in runs)
        diff = np.abs(runs[0][2].astype(np.float64) - base_img.astype(np.float64))
        row.update(
            status="ok",
            time_s=t,
            first_call_s=first,
            speedup=base_t / t,
            memory=runs[0][1],
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            tolerance=IMAGE_ATOL[label],
            equal_within_tolerance=float(diff.mean()) <= IMAGE_ATOL[label],
        )
        log.info(
            "generation fast path %s: %.2f s (x%.2f), mean |diff| %.2e", label, t, row["speedup"], row["mean_abs_diff"]
        )
    return out
