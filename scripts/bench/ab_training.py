"""VQ-GAN training step before/after the speed switches, both decoders, paper widths (issue 13, target 1).

Time: the variants (:data:`scripts.bench.switches.VARIANTS`) are built once with the same weights and trained in
turns in this process (warm-up + repeats per turn, the order rotated every round), so machine load hits them alike.
Memory: every variant in a fresh child process (:mod:`scripts.bench.memchild`), its peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from scripts.bench.common import MODELS, error_reason, not_available, ratio, size_str, summary, training_volumes
from scripts.bench.machine import free_memory
from scripts.bench.switches import SWITCHES, VARIANTS, build_variant, constants_of, differing, resolve_all
from scripts.bench.training import fit_steps

log = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parents[2]


def output_difference(
    models: dict[str, torch.nn.Module], size: tuple[int, ...], seed: int, label_files: list[str] | None = None
) -> dict[str, float]:
    """Largest relative error of each variant's encoder latent and decoded image against "before"'s."""
    from scripts.bench.fastpaths import forward_outputs

    label_nc = int(models["before"].hparams.label_nc)
    batch = {k: v[None] for k, v in training_volumes(1, size, label_nc, seed, label_files)[0].items()}
    with torch.no_grad():
        ref = forward_outputs(models["before"].train(), "vqgan", batch)
        out = {}
        for name, model in models.items():
            outs = forward_outputs(model.train(), "vqgan", batch)
            out[name] = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(ref, outs))
    return out


def time_variants(
    config: str, size: tuple[int, ...], resolved: dict, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Median step time of every variant, trained in alternating turns; plus the output check before training."""
    models = {
        name: build_variant(config, name, resolved, args.seed, args.ab_label_nc)[0].to(device) for name in VARIANTS
    }
    diff = output_difference(models, size, args.seed, args.ab_labels) if device.type == "cpu" else {}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.ab_rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with constants_of(name, resolved):
                timer = fit_steps(models[name], "vqgan", size, args.warmup + args.repeats, 1, args.seed + r, device,
                                  label_files=args.ab_labels)  # fmt: skip
            times[name] += timer.times[args.warmup :]
            log.info(
                "before/after %s %s round %d: %.3f s/step",
                config,
                name,
                r,
                statistics.median(timer.times[args.warmup :] or timer.times),
            )
    del models
    free_memory(device)
    return {"times": times, "max_rel_output_diff_vs_before": diff}


def child_memory(
    name: str, variant: str, size: tuple[int, ...], resolved: dict, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Peak RSS of one variant trained for ``--ab-memory-steps`` batches in a fresh interpreter."""
    request = {
        "model": name,
        "variant": variant,
        "size": list(size),
        "steps": args.ab_memory_steps,
        "seed": args.seed,
        "label_nc": args.ab_label_nc,
        "label_files": list(args.ab_labels or []),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "resolved": {k: {"how": v["how"], "name": v["name"]} for k, v in resolved.items()},
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.bench.memchild", json.dumps(request)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.max_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"child timed out after --max-seconds {args.max_seconds:.0f}"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "error", "reason": f"child exited {proc.returncode}: {tail[0]}"[:500]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def bench_ab_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Before/after step time and child-process peak memory of each ``--ab-models`` VQ-GAN at ``--ab-size``."""
    size = tuple(args.ab_size)
    out: dict[str, Any] = {
        "status": "ok",
        "size": size_str(size),
        "label_nc": args.ab_label_nc,
        "label_maps": list(args.ab_labels) if args.ab_labels else "random blocky label maps",
        "rounds": args.ab_rounds,
        "steps_per_turn": f"{args.warmup} warm-up + {args.repeats} timed",
        "memory_kind": "peak RSS of the fit in a child process per variant (VmHWM reset once the model and its "
        f"LPIPS network are built; ru_maxrss where it cannot be reset), {args.ab_memory_steps} training batches",
        "variants": VARIANTS,
        "switches": {s.key: s.what for s in SWITCHES},
    }
    entries = [_resolve_entry(name, args.seed) for name in args.ab_models]
    out["models"] = entries
    # memory children first, while this process is small: a forked child starts with the parent's ru_maxrss
    for e in entries:
        if e.get("status") == "pending":
            e["memory"] = {v: child_memory(e["model"], v, size, e["resolved"], args, device) for v in VARIANTS}
    for e in entries:
        if e.get("status") != "pending":
            continue
        try:
            timed = time_variants(MODELS[e["model"]].config, size, e["resolved"], args, device)
        except Exception as err:  # noqa: BLE001 - recorded, the next model still runs
            log.exception("before/after training %s failed", e["model"])
            e.update(status="error", reason=error_reason(err))
            continue
        e["status"] = "ok"
        e["step_time_s"] = {v: summary(t) for v, t in timed["times"].items()}
        e["max_rel_output_diff_vs_before"] = timed["max_rel_output_diff_vs_before"]
        e["ratios"] = ratios(e)
        log.info("before/after %s: %s", e["model"], e["ratios"])
    return out


def _resolve_entry(name: str, seed: int) -> dict[str, Any]:
    """The report entry of one model: which switches exist for it ("pending" when there is something to compare)."""
    spec = MODELS[name]
    entry: dict[str, Any] = {"model": name, "config": spec.config}
    try:
        probe, _ = build_variant(spec.config, "after", resolve_all(None), seed)
        entry["resolved"] = resolve_all(probe)
        del probe
    except Exception as err:  # noqa: BLE001 - recorded, the next model still runs
        log.exception("before/after training %s failed", name)
        return {**entry, "status": "error", "reason": error_reason(err)}
    entry["differs"] = {v: differing("before", v, entry["resolved"]) for v in VARIANTS if v != "before"}
    if not any(entry["differs"].values()):
        return {**entry, **not_available("no switch of this comparison exists in this checkout")}
    return {**entry, "status": "pending"}


def ratios(entry: dict[str, Any]) -> dict[str, float | None]:
    """after / before of the median step time, the child's peak RSS and its growth during the fit, per variant."""
    t = {v: s["median"] for v, s in entry["step_time_s"].items()}
    ok = {v: m for v, m in entry["memory"].items() if m.get("status") == "ok"}
    peak = {v: m["peak_mb"] for v, m in ok.items()}
    grow = {v: m["peak_mb"] - m["rss_before_fit_mb"] for v, m in ok.items()}
    process = {v: m["process_peak_rss_mb"] for v, m in ok.items()}
    out: dict[str, float | None] = {}
    for v in VARIANTS:
        if v == "before":
            continue
        out[f"time {v}"] = ratio(t.get(v), t.get("before"))
        out[f"peak memory {v}"] = ratio(peak.get(v), peak.get("before"))
        out[f"training memory {v}"] = ratio(grow.get(v), grow.get("before"))
        out[f"process peak {v}"] = ratio(process.get(v), process.get("before"))
    return out
