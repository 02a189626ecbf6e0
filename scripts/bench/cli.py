"""Performance benchmark of Med-LSDM (SPEC section 9): training steps, samplers, block-wise generation.

Sections (each time a median over ``--repeats`` runs after ``--warmup`` untimed ones): ``training``, one optimiser
step of every ``--models`` model at every ``--sizes`` size in a ``Trainer`` from ``config/trainer`` (time, peak
memory; a size predicted to exceed the memory or ``--max-seconds`` is skipped with the reason), then bf16 autocast
and ``compile`` against fp32; ``sampling`` (needs ``--ckpt``), time per volume and paired SSIM/PSNR of DDPM, DDIM
and rectified flow; ``generation``, ``scripts/generate.py``'s pipeline from one block to the full size (windows,
seam ratio, growth exponents, one sampling step), then ``--precision bf16`` and ``--compile`` against fp32.

The JSON report (``--out``) and its Markdown summary (``.md`` beside it) carry the machine, versions and commit;
an existing report is only replaced with ``--overwrite``. Before / after: run the benchmark on both commits and
pass the older report as ``--compare OLD.json`` (new/old ratios of every row both measured).

    python scripts/benchmark.py --device cpu --quick --out runs/bench/quick.json
    python scripts/benchmark.py --device cuda --out bench.json --ckpt DIFFUSION.ckpt --rflow-ckpt RFLOW.ckpt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffusion.sampling import WINDOW_MODES
from scripts.bench.common import (
    DEFAULT_SAMPLERS,
    DEFAULT_SIZES,
    GEN_BLOCKS,
    GEN_MULTIPLES,
    IMAGE_ATOL,
    MODELS,
    OUTPUT_RTOL,
    QUICK_GEN_MULTIPLES,
    QUICK_SIZES,
    SCHEMA,
    error_reason,
    json_safe,
    parse_sampler,
    parse_size,
    size_str,
)
from scripts.bench.machine import load_average, machine_info, versions

log = logging.getLogger("benchmark")
SECTIONS = ("training", "sampling", "generation")
# (full, quick) defaults of the options left unset
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "warmup": (2, 1),
    "repeats": (5, 2),
    "max_seconds": (600.0, 60.0),
    "sample_volumes": (4, 2),
    "gen_steps": (10, 2),
    "gen_repeats": (2, 1),
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help`` shows the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--out", required=True, type=Path, help="JSON report (the Markdown summary goes beside it, .md)")
    add("--overwrite", action="store_true", help="replace an existing report")
    add("--compare", type=Path, metavar="OLD.json", help="add new / old ratios against this older report")
    add("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    add("--quick", action="store_true", help="small sizes, 1 warm-up + 2 repeats, no compile")
    add("--skip", nargs="+", choices=SECTIONS, default=[], help="sections to leave out")
    add("--seed", type=int, default=0)
    add("--warmup", type=int, help="untimed runs first (2; quick 1)")
    add("--repeats", type=int, help="timed runs (5; quick 2)")
    add("--max-seconds", type=float, help="skip a measurement predicted to take longer (600; quick 60)")
    add("--compile", action=argparse.BooleanOptionalAction, help="measure torch.compile (default: on; off in --quick)")
    g = p.add_argument_group("training")
    g.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models to train (default: all)")
    g.add_argument("--sizes", nargs="+", type=parse_size, help="N or DxHxW (16 32 32x64x64 32x128x128 32x256x256)")
    g.add_argument("--batch-size", type=int, default=1, help="training batch size (the paper runs use 1-2)")
    g.add_argument("--label-nc", type=int, help="label classes of the models (default: the configs', 5)")
    g.add_argument(
        "--labels",
        nargs="+",
        help="real label maps (NIfTI) as the training batches instead of random blocky maps, e.g. a demo's "
        "data/test/labels/*.nii.gz (the SPADE lookup's cost depends on the maps); --sizes becomes their shape",
    )
    g = p.add_argument_group("sampling (trained checkpoints)")
    g.add_argument("--ckpt", type=Path, help="short-trained diffusion checkpoint")
    g.add_argument("--rflow-ckpt", type=Path, help="checkpoint trained with model=diffusion_rflow")
    g.add_argument(
        "--samplers", nargs="+", type=parse_sampler, help="ddpm, ddim:N, rflow:N (" + " ".join(DEFAULT_SAMPLERS) + ")"
    )
    g.add_argument("--sample-volumes", type=int, help="real volumes paired per sampler (4; quick 2)")
    g.add_argument("--split", default="test", help="dataset split of the real volumes")
    g.add_argument("--data-root", help="override the checkpoint's dataset root (e.g. data/mni152)")
    g.add_argument("--guidance", type=float, help="guidance weight (default: the checkpoint's)")
    g = p.add_argument_group("generation (--ckpt, else an untrained model)")
    g.add_argument("--gen-config", choices=sorted(GEN_BLOCKS), help="default: diffusion on cuda, else diffusion_tiny")
    g.add_argument("--gen-block", type=parse_size, help="its training block (default per config)")
    g.add_argument("--gen-sizes", nargs="+", type=parse_size, help="label-map sizes (default: block multiples)")
    g.add_argument("--gen-steps", type=int, help="sampler steps per volume (10; quick 2)")
    g.add_argument("--gen-sampler", choices=("ddim", "rflow", "ddpm"), help="default: ddim (or rflow)")
    g.add_argument("--gen-repeats", type=int, help="timed runs per size (2; quick 1)")
    g.add_argument("--gen-window", choices=WINDOW_MODES, default="auto", help="window layout (generate.py --window)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and fill the defaults (full or ``--quick``); bad values exit 2 with one line."""
    p = build_parser()
    args = p.parse_args(argv)
    q = int(args.quick)
    for key, values in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[q])
    if args.labels:  # the training batches are these maps: their (D, H, W) is the size
        from dataset.nifti import load_label

        try:
            shape = tuple(load_label(args.labels[0])[0].shape)
        except (ValueError, OSError) as err:
            p.error(f"--labels: {err}")
        if args.sizes and [tuple(s) for s in args.sizes] != [shape]:
            p.error(f"--sizes {' '.join(map(size_str, args.sizes))} differs from the --labels maps' {size_str(shape)}")
        args.sizes = [shape]
    args.sizes = args.sizes or list(QUICK_SIZES if q else DEFAULT_SIZES)
    args.models = args.models or list(MODELS)
    args.samplers = args.samplers or [parse_sampler(s) for s in DEFAULT_SAMPLERS]
    args.gen_multiples = list(QUICK_GEN_MULTIPLES if q else GEN_MULTIPLES)
    args.compile_skip_reason = (
        "--no-compile" if args.compile is False else "off in --quick (cold compiles take minutes)"
    )
    args.compile = not q if args.compile is None else args.compile
    for key in ("batch_size", "repeats", "sample_volumes", "gen_steps", "gen_repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def resolve_device(name: str | None) -> torch.device:
    """The ``--device`` (default: CUDA when there is one); ValueError when CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def settings_record(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What the run was asked for, for the report (sizes as ``DxHxW``, paths as text)."""
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "compile_skip_reason"}
    record.update(
        device=str(device),
        sizes=[size_str(s) for s in args.sizes],
        output_rtol=OUTPUT_RTOL,
        gen_sizes=[size_str(s) for s in args.gen_sizes or []],
        image_atol=IMAGE_ATOL,
    )
    return record


def setup_logging() -> None:
    """Logging to stderr, without the libraries' and the product's INFO lines (each measurement logs its own line);
    nothing changes where a host (pytest, a caller) already configured the root logger: its logging is its own."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import pytorch_lightning  # noqa: F401 - sets its loggers to INFO on import; quieten them after that

    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("diffusion", "dataset", "vq_gan_3d"):
        logging.getLogger(name).setLevel(logging.ERROR)  # e.g. the random-VGG note: recorded per row instead


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
    sections = {"training": bench_training, "sampling": bench_sampling, "generation": bench_generation}
    for name, fn in sections.items():
        if name in args.skip:
            report[name] = {"status": "skipped", "reason": "--skip"}
            continue
        log.info("== %s", name)
        t0 = time.perf_counter()
        try:
            report[name] = fn(args, device)
        except Exception as err:  # noqa: BLE001 - a failed section is reported, the others still run
            log.exception("%s failed", name)
            report[name] = {"status": "error", "reason": error_reason(err, 1000)}
        report["section_time_s"][name] = round(time.perf_counter() - t0, 1)
    report["machine"]["load_average_end"] = load_average()
    report["total_time_s"] = round(time.perf_counter() - t_start, 1)
    return report


def read_report(path: Path) -> dict[str, Any] | None:
    """The JSON report this benchmark wrote at ``path`` (any schema version), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA.rsplit("/", 1)[0] + "/")
    return data if ours else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 on a user error (one line, no traceback)."""
    from dataset.files import atomic_write_json, atomic_write_text, check_output_dir
    from scripts.bench.report import compare, markdown

    setup_logging()
    args = parse_args(argv)
    md_path = args.out.with_suffix(".md")
    existing = [str(p) for p in (args.out, md_path) if p.exists()]
    if existing and not args.overwrite:
        log.error("%s exist(s); pass --overwrite to replace", ", ".join(existing))
        return 2
    if args.out.exists() and read_report(args.out) is None:
        log.error("%s is not a benchmark report (no %r schema); --overwrite only replaces reports", args.out, SCHEMA)
        return 2
    old = read_report(args.compare) if args.compare is not None else None
    if args.compare is not None and old is None:
        log.error("--compare %s: no benchmark report there (a JSON file with a %r schema)", args.compare, SCHEMA)
        return 2
    try:
        check_output_dir(args.out.parent)
        report = run(args)
    except ValueError as err:
        log.error("%s", err)
        return 2
    if old is not None:
        report["compare"] = compare(report, old, str(args.compare))
    report = json_safe(report)
    text = markdown(report)
    atomic_write_json(args.out, report)
    atomic_write_text(md_path, text + "\n")
    sys.stdout.write(text + "\n")
    log.info("wrote %s and %s (%.0f s)", args.out, md_path, report["total_time_s"])
    return 0
