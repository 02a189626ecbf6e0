"""Block-wise generation (what ``scripts/generate.py`` runs) from one training block up to the full size: time,
peak memory, the exponents of their growth with the volume, and the generation fast paths."""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.bench.build import build_diffusion
from scripts.bench.common import (
    GEN_BLOCKS,
    MODELS,
    RandomVolumes,
    error_reason,
    fit_power_law,
    random_label,
    size_str,
    summary,
)
from scripts.bench.machine import PeakMemory, free_memory, synchronize

log = logging.getLogger("benchmark")


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
    source = f"{args.gen_config} config, random weights (no --ckpt; time and memory do not depend on the weights)"
    return model, {"source": source, "block": size_str(block)}


def settings_with(settings: Any, **changes: Any) -> Any:
    """``settings`` with those of ``changes`` that ``GenerationSettings`` has (the others are dropped)."""
    known = {f.name for f in fields(settings)}
    return replace(settings, **{k: v for k, v in changes.items() if k in known})


def generate_once(
    model: Any, size: Sequence[int], settings: Any, memory: PeakMemory, device: torch.device, workdir: Path
) -> tuple[float, dict[str, float], np.ndarray]:
    """One ``generate`` call on a random label map of ``size``; returns time, memory and the (D, H, W) volume."""
    from diffusion.generation.pipeline import LabelVolume, generate

    vol = LabelVolume(f"gen_{size_str(size)}", random_label(size, model.label_nc), np.eye(4), "benchmark")
    images: list[np.ndarray] = []
    memory.reset()
    synchronize(device)
    t0 = time.perf_counter()
    generate(
        model,
        [vol],
        workdir,
        settings,
        overwrite=True,
        progress=False,
        on_volume=lambda v, k, image, path: images.append(image),
    )
    synchronize(device)
    return time.perf_counter() - t0, memory.result(), images[0]


def n_windows(
    size: Sequence[int], block: Sequence[int], factor: Sequence[int], overlap: float, mode: str | None = None
) -> int | None:
    """Denoising windows of a label map of ``size`` (None where this checkout cannot tell)."""
    try:
        from diffusion.sampling import windows
    except ImportError:
        return None
    latent = tuple(s // f for s, f in zip(size, factor))
    window = tuple(b // f for b, f in zip(block, factor))
    try:
        from diffusion.sampling import denoise_window

        window = denoise_window(latent, window, mode or "auto")
    except ImportError:
        pass
    return len(windows(latent, window, overlap))  # type: ignore[arg-type]


def _predicted_skip(prev: dict | None, row: dict, args: argparse.Namespace, memory: PeakMemory) -> str | None:
    if prev is None:
        return None
    # time grows with the windows denoised; where they are unknown, with the voxels
    known = row.get("windows") and prev.get("windows")
    scale = row["windows"] / prev["windows"] if known else row["voxels"] / prev["voxels"]
    t_pred = prev["time_s"]["median"] * scale * args.gen_repeats
    mem = prev["memory"]
    peak_pred = mem["baseline_mb"] + mem["increase_mb"] * row["voxels"] / prev["voxels"]
    limit = memory.limit_mb()
    if peak_pred > limit or t_pred > args.max_seconds:
        return (
            f"predicted {t_pred:.0f} s (linear in windows or voxels) and {peak_pred:.0f} MB peak (linear in "
            f"voxels) from {prev['size']}: over --max-seconds {args.max_seconds:.0f} or {limit:.0f} MB available"
        )
    return None


def bench_generation(args: argparse.Namespace, device: torch.device, profile_dir: Path | None) -> dict[str, Any]:
    """Block-wise generation from one block to the full size; the time/memory exponents; fast paths."""
    from diffusion.generation.pipeline import GenerationSettings
    from scripts.bench.genfast import generation_fast_paths, generation_profiles

    memory = PeakMemory(device)
    model, source = generation_model(args, device)
    block = tuple(model.block_size)
    sampler = args.gen_sampler or ("ddim" if "ddim" in model.schedule.samplers else "rflow")
    sizes = args.gen_sizes or [tuple(b * m for b, m in zip(block, mult)) for mult in args.gen_multiples]
    sizes = sorted(sizes, key=math.prod)
    settings = GenerationSettings(sampler=sampler, steps=args.gen_steps, seed=args.seed, resample=False)
    out: dict[str, Any] = {
        "status": "ok",
        "model": source,
        "sampler": sampler,
        "steps": args.gen_steps,
        "overlap": settings.overlap,
        "guidance": float(model.hparams.guidance),
        "memory_kind": memory.kind,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as tmp:
        workdir = Path(tmp)
        generate_once(model, block, settings, memory, device, workdir)  # warm-up
        prev = None
        for size in sizes:
            row: dict[str, Any] = {
                "size": size_str(size),
                "voxels": math.prod(size),
                "windows": n_windows(
                    size, block, model.latent_factor, settings.overlap, getattr(settings, "window", None)
                ),
            }
            out["results"].append(row)
            if any(s < b for s, b in zip(size, block)) or any(s % f for s, f in zip(size, model.latent_factor)):
                row.update(
                    status="skipped",
                    reason=f"size must be >= the block {size_str(block)} and divisible by "
                    f"the latent factor {size_str(model.latent_factor)}",
                )
                continue
            reason = _predicted_skip(prev, row, args, memory)
            if reason:
                row.update(status="skipped", reason=reason)
                log.info("generation %s: skipped: %s", row["size"], reason)
                continue
            try:
                runs = [generate_once(model, size, settings, memory, device, workdir) for _ in range(args.gen_repeats)]
            except Exception as err:  # noqa: BLE001 - recorded
                row.update(status="error", reason=error_reason(err))
                log.warning("generation %s failed: %s", row["size"], row["reason"])
                free_memory(device)
                continue
            row.update(
                status="ok",
                time_s=summary([r[0] for r in runs]),
                memory=max((r[1] for r in runs), key=lambda m: m["peak_mb"]),
            )
            row["time_per_megavoxel_s"] = row["time_s"]["median"] / (row["voxels"] / 1e6)
            log.info(
                "generation %s (%s windows): %.2f s, peak %.0f MB",
                row["size"],
                row["windows"],
                row["time_s"]["median"],
                row["memory"]["peak_mb"],
            )
            prev = row
        ok = [r for r in out["results"] if r.get("status") == "ok"]
        out["full_size"] = ok[-1]["size"] if ok else None
        out["fit"] = growth_fits(ok)
        out["fast_paths"] = generation_fast_paths(args, device, model, block, settings, memory, workdir)
        if profile_dir is not None:
            prof_args = (model, block, sampler, settings, ok, memory, device, workdir, profile_dir)
            out["_profiles"] = generation_profiles(*prof_args)
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
    wins = [r["windows"] for r in rows]
    if None not in wins and len(set(wins)) >= 2:
        fits["time_vs_windows"] = fit_power_law(wins, [r["time_s"]["median"] for r in rows])
    if len(rows) < 4:
        fits["note"] = f"only {len(rows)} sizes measured (at least four asked for)"
    return fits
