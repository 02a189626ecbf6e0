"""Block-wise generation (what ``scripts/generate.py`` runs) from one training block up to the full size: time (split
into denoising and decoding), peak memory, windows and seam ratio per size, the exponents of their growth with the
volume, the steady-state time of one sampling step, and ``--precision bf16`` / ``--compile`` against fp32."""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.report import summarise
from scripts.bench import common
from scripts.bench.build import build_diffusion, fit_random_statistics
from scripts.bench.common import IMAGE_ATOL, NO_COMPILE, PeakMemory, fit_power_law, log, measured, size_str


def generation_model(args: argparse.Namespace, device: torch.device, compile: bool = False) -> tuple[Any, dict]:
    """The first ``--ckpt``, or an untrained model of ``--gen-config`` (time and memory do not depend on weights)."""
    if args.ckpt:
        from diffusion.generation.pipeline import load_model

        name, path = next(iter(args.ckpt.items()))
        model = load_model(path, device, compile=compile)
        return model, {"source": f"{name}: {path}", "block": size_str(model.block_size)}
    block, spec = args.gen_block or common.GEN_BLOCKS[args.gen_config], common.MODELS[args.gen_config]
    torch.manual_seed(args.seeds[0])  # the compiled copy gets the same weights as the baseline
    model = fit_random_statistics(build_diffusion(spec.config, spec.first_stage, block, compile=compile)[0], block)
    source = f"{args.gen_config} config, random weights (no --ckpt; time and memory do not depend on the weights)"
    return model.eval().to(device), {"source": source, "block": size_str(block)}


@dataclass
class Runner:
    """One model generating random label maps into a scratch folder, timed and measured."""

    model: Any
    memory: PeakMemory
    device: torch.device
    workdir: Path
    seed: int = 0

    def once(self, size: Sequence[int], settings: Any) -> tuple[dict[str, Any], np.ndarray]:
        """One ``generate`` call on a map of ``size``: ``{"seconds", "denoise_s", "decode_s", "memory"}`` and the
        (D, H, W) volume."""
        from diffusion.generation.pipeline import LabelVolume, generate

        label = common.Volumes(1, size, self.model.label_nc, self.seed)[0]["label"][0].numpy()
        vol, images = LabelVolume(f"gen_{size_str(size)}", label, np.eye(4), "benchmark"), []
        self.memory.reset()
        with common.timed_sampling(self.model, self.device) as seconds:
            generate(self.model, [vol], self.workdir, settings, overwrite=True, progress=False,
                     on_volume=lambda v, k, image, path: images.append(image))  # fmt: skip
        return {**seconds, "memory": self.memory.result()}, images[0]

    def size_row(self, size: Sequence[int], borders: list, settings: Any, repeats: int) -> dict[str, Any]:
        """``repeats`` runs of one size: time (median), denoise / decode, the highest peak, the seam ratio."""
        from evaluation.seams import seam_ratio

        runs = [self.once(size, settings) for _ in range(repeats)]
        return {"time_s": summarise([r["seconds"] for r, _ in runs]),
                "denoise_s": statistics.median(r["denoise_s"] for r, _ in runs),
                "decode_s": statistics.median(r["decode_s"] for r, _ in runs),
                "memory": max((r["memory"] for r, _ in runs), key=lambda m: m["peak_mb"]),
                "seam_ratio": seam_ratio(runs[0][1], borders)}  # fmt: skip

    def step_time(self, block: Sequence[int], settings: Any, n: int) -> dict[str, Any] | None:
        """Steady-state time of one sampling step: (time of N steps - time of 1) / (N - 1), which leaves out what is
        paid once per volume (label encoding, the SPADE cache, decoding); None with fewer than two steps or when
        the difference drowns in the timing noise."""
        if settings.steps < 2:
            return None
        one = replace(settings, steps=1)
        per = [(self.once(block, settings)[0]["seconds"] - self.once(block, one)[0]["seconds"]) / (settings.steps - 1)
               for _ in range(n)]  # fmt: skip
        return summarise(per) if statistics.median(per) > 0 else None


def window_layout(model: Any, size: Sequence[int], settings: Any) -> tuple[int, list[list[int]]]:
    """Denoising windows of a label map of ``size`` as ``generate`` lays them out (ValueError for a size it refuses:
    not a multiple of the latent factor, or smaller than the block) and, per axis, the image planes where they meet."""
    from diffusion.sampling import latent_window, windows
    from evaluation.seams import window_borders

    factor = tuple(model.latent_factor)
    window = latent_window(size, factor, model.block_size, settings.window, multiple=model.denoiser.size_multiple)
    wins = windows(tuple(s // f for s, f in zip(size, factor)), window, settings.overlap)
    pairs = [{(w[a].start * factor[a], w[a].stop * factor[a]) for w in wins} for a in range(3)]
    return len(wins), window_borders(pairs, size)


def bench_generation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Block-wise generation from one block to the full size; growth exponents; step time; fast paths."""
    from diffusion.generation.pipeline import GenerationSettings

    memory = PeakMemory(device)
    model, source = generation_model(args, device)
    block = tuple(model.block_size)
    sampler = "ddim" if "ddim" in model.schedule.samplers else "rflow"
    sizes = args.gen_sizes or [tuple(b * m for b, m in zip(block, mult)) for mult in args.gen_multiples]
    settings = GenerationSettings(sampler=sampler, steps=args.gen_steps, seed=args.seeds[0], resample=False,
                                  window=args.gen_window)  # fmt: skip
    out: dict[str, Any] = {"status": "ok", "model": source, "sampler": sampler, "steps": args.gen_steps,
                           "overlap": settings.overlap, "window": settings.window, "results": [],
                           "guidance": float(model.hparams.guidance), "memory_kind": memory.kind}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as tmp:
        run = Runner(model, memory, device, Path(tmp))
        run.once(block, settings)  # warm-up
        out["step_time_s"], prev = run.step_time(block, settings, args.gen_repeats), None
        for size in sorted(sizes, key=math.prod):
            row: dict[str, Any] = {"size": size_str(size), "voxels": math.prod(size)}
            out["results"].append(row)
            try:
                row["windows"], borders = window_layout(model, size, settings)
            except ValueError as err:
                row.update(status="skipped", reason=str(err))
                continue
            if prev is not None:  # predicted from the last size: time linear in windows, memory in voxels
                t_pred = prev["time_s"]["median"] * row["windows"] / prev["windows"] * args.gen_repeats
                if reason := memory.over_budget(prev, t_pred, row["voxels"] / prev["voxels"], args.max_seconds):
                    row.update(status="skipped", reason=reason)
                    continue
            if measured(row, f"generation {row['size']}", partial(run.size_row, size, borders, settings,
                                                                   args.gen_repeats), device):  # fmt: skip
                row["time_per_megavoxel_s"] = row["time_s"]["median"] / (row["voxels"] / 1e6)
                log.info("generation %s (%s windows): %.2f s, peak %.0f MB", row["size"], row["windows"],
                         row["time_s"]["median"], row["memory"]["peak_mb"])  # fmt: skip
                prev = row
        ok = [r for r in out["results"] if r.get("status") == "ok"]
        out.update(full_size=ok[-1]["size"] if ok else None, fit=growth_fits(ok))
        out["fast_paths"] = fast_paths(args, device, run, block, settings)
    return out


def growth_fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponents of time and memory against voxels (and time against windows) over the measured sizes."""
    if len({r["voxels"] for r in rows}) < 2:
        return {"status": "skipped", "reason": f"{len(rows)} measured size(s); a fit needs at least two"}
    vox, times = [r["voxels"] for r in rows], [r["time_s"]["median"] for r in rows]
    fits: dict[str, Any] = {"status": "ok", "sizes": len(rows), "time_vs_voxels": fit_power_law(vox, times)}
    fits["memory_increase_vs_voxels"] = fit_power_law(vox, [max(r["memory"]["increase_mb"], 1e-3) for r in rows])
    fits["peak_memory_vs_voxels"] = fit_power_law(vox, [r["memory"]["peak_mb"] for r in rows])
    if len({r["windows"] for r in rows}) >= 2:
        fits["time_vs_windows"] = fit_power_law([r["windows"] for r in rows], times)
    return fits


def fast_path(args: argparse.Namespace, run: Runner, block: Sequence[int], settings: Any, base: list) -> dict:
    """One fast path on the block (``--compile``: a compiled copy of the model): its first call (compilation),
    time, memory and voxel difference to the fp32 runs ``base``."""
    compiled = settings.precision == "32"
    if compiled:
        run = replace(run, model=generation_model(args, run.device, compile=True)[0])
    first = time.perf_counter()
    run.once(block, settings)  # warm-up: compiles on the first call
    first = time.perf_counter() - first
    runs = [run.once(block, settings) for _ in range(args.gen_repeats)]
    t, base_t = (statistics.median(r["seconds"] for r, _ in rs) for rs in (runs, base))
    diff = np.abs(runs[0][1].astype(np.float64) - base[0][1].astype(np.float64))
    tol = IMAGE_ATOL["compile" if compiled else settings.precision]
    return {"time_s": t, "first_call_s": first, "speedup": base_t / t, "memory": runs[0][0]["memory"],
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "tolerance": tol,
            "equal_within_tolerance": float(diff.mean()) <= tol}  # fmt: skip


def fast_paths(
    args: argparse.Namespace, device: torch.device, run: Runner, block: Sequence[int], settings: Any
) -> list:
    """``--precision bf16`` (and 16 on CUDA) and ``--compile`` of scripts/generate.py against fp32, on one block."""
    base, size = [run.once(block, settings) for _ in range(args.gen_repeats)], size_str(block)
    out = [{"option": "--precision 32", "size": size, "status": "ok", "memory": base[0][0]["memory"],
            "time_s": statistics.median(r["seconds"] for r, _ in base)}]  # fmt: skip
    precisions = ["bf16", "16"] if device.type == "cuda" else ["bf16"]
    for option, precision in [*((f"--precision {p}", p) for p in precisions), ("--compile", "32")]:
        row: dict[str, Any] = {"option": option, "size": size}
        out.append(row)
        fast = replace(settings, precision=precision)
        if option == "--compile" and not args.compile:
            row.update(status="skipped", reason=NO_COMPILE)
        elif measured(row, f"generation fast path {option}", partial(fast_path, args, run, block, fast, base), device):
            log.info("generation fast path %s: %.2f s (x%.2f), mean |diff| %.2e", row["option"], row["time_s"],
                     row["speedup"], row["mean_abs_diff"])  # fmt: skip
    return out
