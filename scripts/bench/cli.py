"""Performance benchmark of Med-LSDM (SPEC §9): training steps, samplers, block-wise generation, fast paths, and the
before/after ratios of the speed work.

    python scripts/benchmark.py --device cpu --quick --out runs/bench/bench.json
    python scripts/benchmark.py --device cuda --out bench.json --ckpt DIFFUSION.ckpt --rflow-ckpt RFLOW.ckpt
    python scripts/benchmark.py --skip training sampling generation --out runs/bench/ab.json   # before/after only

Sections (every time is a median over ``--repeats`` runs after ``--warmup`` untimed ones):

1. ``before_after``: VQ-GAN training step time and child-process peak memory with today's computation vs the new
   switches (and activation checkpointing), both decoders, paper widths at ``--ab-size``; the sampling step with
   and without the step-invariant SPADE cache; generation time per voxel against one block, with a seam ratio. The
   variants alternate in this process, so each ratio comes from one run.
2. ``training``: wall time and peak memory of one optimiser step of every ``--models`` model at every ``--sizes``
   size in a ``Trainer`` composed from ``config/trainer``; a size predicted (linearly from the last) to exceed the
   memory or ``--max-seconds`` is skipped with the reason. Then bf16 autocast and ``compile`` against fp32.
3. ``sampling`` (needs ``--ckpt``): time per volume and paired SSIM/PSNR of DDPM, DDIM and rectified flow.
4. ``generation``: ``scripts/generate.py``'s pipeline from one block to the full size; exponents of time and memory
   against voxels; ``--precision bf16`` and ``--compile`` against fp32.
5. ``--profile DIR``: torch.profiler tables of one training step of each model and one sampling step.

Results go to ``--out`` (JSON) and a Markdown summary beside it (``.md``), with the machine record (CPU, cores,
threads, versions, date), both written atomically; an existing report is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scripts.bench.args import parse_args as _parse_args
from scripts.bench.args import resolve_device, settings_record
from scripts.bench.common import SCHEMA, error_reason, json_safe
from scripts.bench.machine import load_average, machine_info, versions

log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``argv`` with their defaults filled (:func:`scripts.bench.args.parse_args`)."""
    return _parse_args(argv, __doc__)


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

    quiet = (
        "pytorch_lightning",
        "lightning_fabric",
        "lightning",
        "torch._dynamo",
        "torch._inductor",
        "diffusion",
        "dataset",
        "vq_gan_3d",
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("vq_gan_3d.perceptual").setLevel(logging.ERROR)  # random-VGG note: recorded per row instead


def bench_before_after(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The three before/after parts; a part that fails is recorded, the others still run."""
    from scripts.bench.ab_generation import bench_ab_generation
    from scripts.bench.ab_sampling import bench_ab_sampling
    from scripts.bench.ab_training import bench_ab_training

    parts = {"training": bench_ab_training, "sampling": bench_ab_sampling, "generation": bench_ab_generation}
    out: dict[str, Any] = {"status": "ok"}
    for name, fn in parts.items():
        if name not in args.ab_parts:
            out[name] = {"status": "skipped", "reason": "--ab-parts"}
            continue
        t0 = time.perf_counter()
        try:
            out[name] = fn(args, device)
        except Exception as err:  # noqa: BLE001 - a failed part is reported
            log.exception("before/after %s failed", name)
            out[name] = {"status": "error", "reason": error_reason(err, 1000)}
        out[name]["time_s"] = round(time.perf_counter() - t0, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every section; returns the report (also what is written)."""
    import warnings

    from scripts.bench.generation import bench_generation
    from scripts.bench.sampling import bench_sampling
    from scripts.bench.training import bench_training

    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    device = resolve_device(args.device)
    if args.gen_config is None:
        args.gen_config = "diffusion" if device.type == "cuda" else "diffusion_tiny"
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_info(device),
        "versions": versions(),
        "settings": {**settings_record(args, device), "gen_config": args.gen_config},
        "section_time_s": {},
    }
    profile_dir = args.profile
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    profiles: list[dict] = []
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("before_after", lambda: bench_before_after(args, device)),
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
            result = {"status": "error", "reason": error_reason(err, 1000)}
        profiles += result.pop("_profiles", [])
        report[name] = result
        report["section_time_s"][name] = round(time.perf_counter() - t0, 1)
    report["profiles"] = profiles
    report["machine"]["load_average_end"] = load_average()
    report["total_time_s"] = round(time.perf_counter() - t_start, 1)
    return report


def is_report(path: Path) -> bool:
    """True when ``path`` is a JSON report this benchmark wrote (any schema version)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA.rsplit("/", 1)[0] + "/")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 on a user error (one line, no traceback)."""
    from dataset.files import atomic_write_json, atomic_write_text, check_output_dir
    from scripts.bench.report import markdown

    setup_logging()
    args = parse_args(argv)
    md_path = args.out.with_suffix(".md")
    existing = [str(p) for p in (args.out, md_path) if p.exists()]
    if existing and not args.overwrite:
        log.error("%s exist(s); pass --overwrite to replace", ", ".join(existing))
        return 2
    if args.out.exists() and not is_report(args.out):
        log.error("%s is not a benchmark report (no %r schema); --overwrite only replaces reports", args.out, SCHEMA)
        return 2
    try:
        check_output_dir(args.out.parent)
        if args.profile is not None:
            check_output_dir(args.profile, what="--profile")
        report = run(args)
    except ValueError as err:
        log.error("%s", err)
        return 2
    report = json_safe(report)
    text = markdown(report)
    atomic_write_json(args.out, report)
    atomic_write_text(md_path, text + "\n")
    sys.stdout.write(text + "\n")
    log.info("wrote %s and %s (%.0f s)", args.out, md_path, report["total_time_s"])
    return 0
