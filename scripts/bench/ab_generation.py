"""Generation time per voxel against a single training block, with a seam metric (issue 13, target 5).

For each window layout the pipeline offers (``GenerationSettings.window``: "block" = the training window on
every axis, today's layout; "auto" = the new default) every size is generated in alternating turns, and the time
per voxel is divided by that of one training block in the same layout.

Seam metric (:func:`seam_ratio`): the mean squared intensity step across the planes where windows start or end
(multiples of half the training block along each axis, the window edges of overlap 0.5) divided by the mean
squared step across all other planes. 1 means the window borders cannot be told from the inside; a visible seam
raises it.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.bench.common import error_reason, ratio, size_str, summary
from scripts.bench.generation import generate_once, generation_model, n_windows, settings_with
from scripts.bench.machine import PeakMemory, free_memory

log = logging.getLogger("benchmark")
LAYOUTS = {"block": "training window on every axis (before)", "auto": "whole plane, training depth (after)"}


def seam_ratio(image: np.ndarray, block: Sequence[int]) -> float | None:
    """Squared steps across window-edge planes / squared steps across the other planes (see the module doc).

    Args:
        image: (D, H, W) generated volume.
        block: training block (D, H, W) in image voxels; edges at multiples of half of it.

    Returns:
        The ratio, or None when the volume has no interior edge plane or no other plane (or is constant).
    """
    edge_sum, edge_n, rest_sum, rest_n = 0.0, 0, 0.0, 0
    img = np.asarray(image, dtype=np.float64)
    for axis, b in enumerate(block):
        n = img.shape[axis]
        if n < 2:
            continue
        step = np.diff(img, axis=axis) ** 2  # step[i] lies between voxel i and i + 1
        energy = step.mean(axis=tuple(a for a in range(3) if a != axis))  # (n - 1,)
        half = max(int(b) // 2, 1)
        is_edge = np.zeros(n - 1, dtype=bool)
        is_edge[[p - 1 for p in range(half, n, half)]] = True
        edge_sum, edge_n = edge_sum + float(energy[is_edge].sum()), edge_n + int(is_edge.sum())
        rest_sum, rest_n = rest_sum + float(energy[~is_edge].sum()), rest_n + int((~is_edge).sum())
    if edge_n == 0 or rest_n == 0 or rest_sum <= 0:
        return None
    return (edge_sum / edge_n) / (rest_sum / rest_n)


def layout_field(settings: Any) -> str | None:
    """The ``GenerationSettings`` field that selects the window layout (None where there is none)."""
    names = {f.name for f in fields(settings)}
    return next((n for n in ("window", "window_mode") if n in names), None)


def layouts(settings: Any) -> dict[str, dict[str, Any]]:
    """Window layouts to compare: both where the pipeline has a layout field, else only the current one."""
    name = layout_field(settings)
    if name is not None:
        return {mode: {name: mode} for mode in LAYOUTS}
    return {"current": {}}


def bench_ab_generation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time per voxel at every ``--ab-gen-sizes`` size relative to one block, and the seam ratio, per layout."""
    from diffusion.generation.pipeline import GenerationSettings

    memory = PeakMemory(device)
    model, source = generation_model(args, device)
    block = tuple(model.block_size)
    sampler = args.gen_sampler or ("ddim" if "ddim" in model.schedule.samplers else "rflow")
    base = GenerationSettings(sampler=sampler, steps=args.ab_gen_steps, seed=args.seed, resample=False)
    modes = layouts(base)
    sizes = sorted({tuple(block), *(tuple(s) for s in args.ab_gen_sizes)}, key=math.prod)
    out: dict[str, Any] = {
        "status": "ok",
        "model": source,
        "block": size_str(block),
        "sampler": sampler,
        "steps": args.ab_gen_steps,
        "overlap": base.overlap,
        "rounds": args.ab_gen_rounds,
        "layouts": {m: LAYOUTS.get(m, "the pipeline's only layout") for m in modes},
        "seam_metric": "mean squared step across planes at multiples of half the block / mean "
        "squared step across the other planes (1 = no seam)",
        "results": [],
    }
    if len(modes) == 1:
        out["before"] = "not available: GenerationSettings has no window layout field, so only the current layout runs"
    times: dict[tuple[str, tuple[int, ...]], list[float]] = {}
    seams: dict[tuple[str, tuple[int, ...]], float | None] = {}
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as tmp:
        workdir = Path(tmp)
        try:
            for change in modes.values():  # warm-up of each layout
                generate_once(model, block, settings_with(base, **change), memory, device, workdir)
            for r in range(args.ab_gen_rounds):
                for size in sizes:
                    order = list(modes.items())
                    for mode, change in order[r % len(order) :] + order[: r % len(order)]:
                        t, _, image = generate_once(
                            model, size, settings_with(base, **change), memory, device, workdir
                        )
                        times.setdefault((mode, size), []).append(t)
                        seams.setdefault((mode, size), seam_ratio(image, block))
                        log.info("before/after generation %s %s: %.2f s", mode, size_str(size), t)
        except Exception as err:  # noqa: BLE001 - recorded with what was measured so far
            log.exception("before/after generation failed")
            out.update(status="error", reason=error_reason(err))
        finally:
            free_memory(device)
    for mode in modes:
        ref = times.get((mode, tuple(block)))
        ref_pv = summary(ref)["median"] / math.prod(block) if ref else None
        for size in sizes:
            t = times.get((mode, size))
            row: dict[str, Any] = {
                "layout": mode,
                "size": size_str(size),
                "voxels": math.prod(size),
                "windows": n_windows(
                    size, block, model.latent_factor, base.overlap, modes[mode].get(layout_field(base) or "", None)
                ),
            }
            if t:
                per_voxel = summary(t)["median"] / math.prod(size)
                row.update(
                    status="ok",
                    time_s=summary(t),
                    time_per_megavoxel_s=per_voxel * 1e6,
                    per_voxel_vs_block=ratio(per_voxel, ref_pv),
                    seam_ratio=seams.get((mode, size)),
                )
            else:
                row.update(status="not measured")
            out["results"].append(row)
    _vs_before(out["results"])
    return out


def _vs_before(rows: list[dict[str, Any]]) -> None:
    """``time_vs_before``: each "auto" row's median time over the "block" row's at the same size (in place)."""
    before = {r["size"]: r["time_s"]["median"] for r in rows if r["layout"] == "block" and r.get("status") == "ok"}
    for r in rows:
        if r["layout"] == "auto" and r.get("status") == "ok":
            r["time_vs_before"] = ratio(r["time_s"]["median"], before.get(r["size"]))
