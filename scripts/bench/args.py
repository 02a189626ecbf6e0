"""The command line of the benchmark: options, their full and ``--quick`` defaults, and the settings record.

The option list and what each section measures are in :mod:`scripts.bench.cli` (``--help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

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
    parse_sampler,
    parse_size,
    size_str,
)

SECTIONS = ("before_after", "training", "sampling", "generation")
AB_PARTS = ("training", "sampling", "generation")
VQGAN_MODELS = sorted(k for k, s in MODELS.items() if s.stage == "vqgan")
DIFFUSION_MODELS = sorted(k for k, s in MODELS.items() if s.stage == "diffusion")
# (full, quick) defaults of the options left unset
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "warmup": (2, 1),
    "repeats": (5, 2),
    "max_seconds": (600.0, 60.0),
    "sample_volumes": (4, 2),
    "gen_steps": (10, 2),
    "gen_repeats": (2, 1),
    "ab_size": ((32, 64, 64), (32, 32, 32)),
    "ab_models": (["vqgan_normal", "vqgan_spade"], ["vqgan_normal_tiny", "vqgan_spade_tiny"]),
    "ab_rounds": (3, 2),
    "ab_memory_steps": (2, 2),
    "ab_diffusion": ("diffusion", "diffusion_tiny"),
    "ab_sample_steps": (10, 4),
    "ab_gen_sizes": ([(32, 32, 32), (64, 64, 64), (64, 128, 128)], [(32, 32, 32), (32, 64, 64)]),
    "ab_gen_steps": (10, 2),
    "ab_gen_rounds": (2, 1),
}


def _add_ab_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("before/after (issue 13 targets)")
    g.add_argument("--ab-parts", nargs="+", choices=AB_PARTS, default=list(AB_PARTS), help="default: all three")
    g.add_argument("--ab-size", type=parse_size, default=None, help="training / sampling size (32x64x64; quick 32)")
    g.add_argument(
        "--ab-models",
        nargs="+",
        choices=VQGAN_MODELS,
        default=None,
        help="VQ-GANs (vqgan_normal vqgan_spade: paper widths; quick: the tiny ones)",
    )
    g.add_argument("--ab-label-nc", type=int, default=37, help="label classes of the VQ-GANs (37: AutoPET)")
    g.add_argument(
        "--ab-labels",
        nargs="+",
        default=None,
        help="real label maps (NIfTI) as the training batches of the before/after training, e.g. a demo's "
        "data/test/labels/*.nii.gz; --ab-size becomes their shape (default: random blocky maps)",
    )
    g.add_argument("--ab-rounds", type=int, default=None, help="alternation rounds (3; quick 2)")
    g.add_argument("--ab-memory-steps", type=int, default=None, help="batches per memory child (2)")
    g.add_argument("--ab-diffusion", choices=DIFFUSION_MODELS, default=None, help="sampling model (diffusion)")
    g.add_argument("--ab-sample-steps", type=int, default=None, help="DDIM steps per timed sampling (10; quick 4)")
    g.add_argument(
        "--ab-gen-sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="generation sizes besides one block (32 64 64x128x128; quick 32 32x64x64)",
    )
    g.add_argument("--ab-gen-steps", type=int, default=None, help="sampler steps per generation (10; quick 2)")
    g.add_argument("--ab-gen-rounds", type=int, default=None, help="generation alternation rounds (2; quick 1)")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``description`` is the ``--help`` text."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="JSON report (the Markdown summary goes beside it, .md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 warm-up + 2 repeats, no compile")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="training image sizes, N or DxHxW (default: 16 32 32x64x64 32x128x128 32x256x256; quick: 16)",
    )
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None, help="models to train (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="training batch size (the paper runs use 1-2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip a measurement predicted to take longer (default 600; quick 60)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure torch.compile (default: on, off with --quick: cold CPU compiles take minutes)",
    )
    p.add_argument("--ckpt", type=Path, default=None, help="short-trained diffusion checkpoint (sampler section)")
    p.add_argument("--rflow-ckpt", type=Path, default=None, help="checkpoint trained with model=diffusion_rflow")
    p.add_argument(
        "--samplers",
        nargs="+",
        type=parse_sampler,
        default=None,
        help="ddpm (all T steps), ddim:N, rflow:N (default: ddpm ddim:25 ddim:50 ddim:100 rflow:30)",
    )
    p.add_argument("--sample-volumes", type=int, default=None, help="real volumes paired per sampler (4; quick 2)")
    p.add_argument("--split", default="test", help="dataset split of the real volumes")
    p.add_argument("--data-root", default=None, help="override the checkpoint's dataset root (e.g. data/mni152)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight (default: the checkpoint's)")
    p.add_argument(
        "--gen-config",
        choices=sorted(GEN_BLOCKS),
        default=None,
        help="untrained model for generation without --ckpt (default: diffusion on cuda, else tiny)",
    )
    p.add_argument("--gen-block", type=parse_size, default=None, help="its training block (default per config)")
    p.add_argument(
        "--gen-sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="label-map sizes (default: the block times 1x1x1 1x1x2 1x2x2 2x2x2 2x4x4 4x4x4; quick: 4)",
    )
    p.add_argument("--gen-steps", type=int, default=None, help="sampler steps per generated volume (10; quick 2)")
    p.add_argument("--gen-sampler", choices=("ddim", "rflow", "ddpm"), default=None, help="default: ddim (or rflow)")
    p.add_argument("--gen-repeats", type=int, default=None, help="timed runs per generation size (2; quick 1)")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="sections to leave out")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR", help="write torch.profiler tables here")
    p.add_argument("--seed", type=int, default=0)
    _add_ab_args(p)
    return p


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse and fill the defaults (full or ``--quick``); bad values exit 2 with one line."""
    p = build_parser(description)
    args = p.parse_args(argv)
    q = int(args.quick)
    if args.ab_labels:  # the before/after training runs on these maps: their (D, H, W) is the size
        from dataset.nifti import load_label

        try:
            shape = tuple(load_label(args.ab_labels[0])[0].shape)
        except (ValueError, OSError) as err:
            p.error(f"--ab-labels: {err}")
        if args.ab_size is not None and tuple(args.ab_size) != shape:
            p.error(f"--ab-size {size_str(args.ab_size)} differs from the --ab-labels maps' {size_str(shape)}")
        args.ab_size = shape
    for key, values in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[q])
    args.sizes = args.sizes or list(QUICK_SIZES if q else DEFAULT_SIZES)
    args.models = args.models or list(MODELS)
    args.samplers = args.samplers or [parse_sampler(s) for s in DEFAULT_SAMPLERS]
    args.gen_multiples = list(QUICK_GEN_MULTIPLES if q else GEN_MULTIPLES)
    if args.compile is None:
        args.compile = not q
        args.compile_skip_reason = "off in --quick (a cold inductor compile takes minutes on a CPU); pass --compile"
    else:
        args.compile_skip_reason = "--no-compile"
    positive = (
        "batch_size",
        "repeats",
        "sample_volumes",
        "gen_steps",
        "gen_repeats",
        "ab_rounds",
        "ab_label_nc",
        "ab_memory_steps",
        "ab_sample_steps",
        "ab_gen_steps",
        "ab_gen_rounds",
    )
    for key in positive:
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
    """What the run was asked for, for the report."""
    return {
        "device": str(device),
        "quick": args.quick,
        "sizes": [size_str(s) for s in args.sizes],
        "models": args.models,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "max_seconds": args.max_seconds,
        "compile": args.compile,
        "seed": args.seed,
        "samplers": [f"{n}:{s}" if s else n for n, s in args.samplers],
        "sample_volumes": args.sample_volumes,
        "split": args.split,
        "gen_steps": args.gen_steps,
        "gen_repeats": args.gen_repeats,
        "gen_sizes": [size_str(s) for s in args.gen_sizes] if args.gen_sizes else None,
        "gen_multiples": [size_str(m) for m in args.gen_multiples],
        "skip": args.skip,
        "ab": {
            "parts": args.ab_parts,
            "size": size_str(args.ab_size),
            "models": args.ab_models,
            "rounds": args.ab_rounds,
            "label_nc": args.ab_label_nc,
            "label_maps": args.ab_labels,
            "memory_steps": args.ab_memory_steps,
            "diffusion": args.ab_diffusion,
            "sample_steps": args.ab_sample_steps,
            "gen_sizes": [size_str(s) for s in args.ab_gen_sizes],
            "gen_steps": args.ab_gen_steps,
            "gen_rounds": args.ab_gen_rounds,
        },
        "training_data": "random image in [-1, 1] and blocky random label map (cost does not depend on content)",
        "timing": "wall clock, CUDA synchronised; median over repeats after warm-up",
        "output_rtol": OUTPUT_RTOL,
        "image_atol": IMAGE_ATOL,
    }
