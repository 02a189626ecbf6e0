"""Performance benchmark of Med-LSDM (SPEC section 9); each time a median over ``--repeats`` after ``--warmup``.

Sections: ``training``, a step of every ``--models`` model at every ``--sizes`` size (random maps or a
``--dataset``'s volumes under one or two ``--class-tables``) in a ``Trainer`` from ``config/trainer``, then bf16 /
``compile``; ``sampling``, samplers on every ``--ckpt`` (a teacher and its students alike): seconds per
volume, denoising and decoding apart, and paired quality over ``--seeds``; ``generation``, ``generate.py``'s
pipeline from one block to the full size (windows, seams, growth exponents, one step), then bf16 / ``--compile``.
``--out DIR`` gets ``benchmark.json`` (report and run record: machine, versions, commit) and ``benchmark.md``;
``--compare OLD`` adds new/old ratios against a report of another commit.

    python scripts/benchmark.py --device cpu --quick --out runs/bench/quick
    python scripts/benchmark.py --device cuda --out runs/bench/gpu --ckpt ddpm=DDPM.ckpt rflow=RFLOW.ckpt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataset.cli import ArgumentParser, check_unique, float_in, nonnegative_int, pick_device, positive_int, run_cli
from dataset.contract import DataError
from diffusion.sampling import WINDOW_MODES
from scripts.bench import common
from scripts.bench.common import SCHEMA, error_reason, log, parse_sampler, parse_size, size_str

SECTIONS = ("training", "sampling", "generation")
RECORD, SUMMARY = "benchmark.json", "benchmark.md"
# (full, quick) defaults of the options left unset (gen_multiples: block multiples of the generation sizes)
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "warmup": (2, 1), "repeats": (5, 2), "max_seconds": (600.0, 60.0), "sample_volumes": (4, 2),
    "gen_steps": (10, 2), "gen_repeats": (2, 1), "compile": (True, False),
    "gen_multiples": (common.GEN_MULTIPLES, common.GEN_MULTIPLES[:4]), "models": (list(common.MODELS),) * 2,
    "samplers": ([parse_sampler(s) for s in common.DEFAULT_SAMPLERS],) * 2,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help`` shows the module docstring)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--out", required=True, type=Path, help=f"output folder ({RECORD}: the report; {SUMMARY}: its summary)")
    add("--overwrite", action="store_true", help="replace a previous benchmark's files in --out")
    add("--compare", type=Path, metavar="OLD", help="add new/old ratios against an older report (file or folder)")
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    add("--quick", action="store_true", help="small sizes, 1 warm-up + 2 repeats, no compile")
    add("--skip", nargs="+", choices=SECTIONS, default=[], help="sections to leave out")
    add("--seeds", nargs="+", type=nonnegative_int, default=[0], help="sampling seeds; the first seeds the rest")
    add("--warmup", type=nonnegative_int, help="untimed runs first (2; quick 1)")
    add("--repeats", type=positive_int, help="timed runs (5; quick 2)")
    add("--max-seconds", type=float_in(0, None, lo_open=True), help="skip a longer predicted measurement (600; 60)")
    add("--compile", action=argparse.BooleanOptionalAction, help="measure torch.compile (default: on; off in --quick)")
    add("--log-level", default="info", help="logging level")
    g = p.add_argument_group("training").add_argument
    g("--models", nargs="+", choices=sorted(common.MODELS), help="models to train (default: all)")
    g("--sizes", nargs="+", type=parse_size, help="N or DxHxW (16 32 32x64x64 32x128x128 32x256x256)")
    g("--label-nc", type=positive_int, help="label classes of the models (default: the dataset config's)")
    g("--dataset", help="train on this dataset config's training volumes (its block is the size)")
    g("--config-dir", type=Path, help="your config folder holding dataset/<--dataset>.yaml")
    g("--class-tables", nargs="+", choices=("table", "raw"), help="with --dataset: its label table as configured "
      "and/or raw ids (each id up to the largest a one-hot channel); each model once per table and round")  # fmt: skip
    g("--rounds", type=positive_int, default=1, help="measurements per row, class tables and variants alternated")
    g("--variants", nargs="+", metavar="NAME:KEY=VALUE,...", help="VQ-GAN models only: each model once per variant "
      "of its arguments, alternated, e.g. lookup: conv:spade_lookup=false lean:checkpointing=true,spade_recompute=true"
      " (an empty list = the config as it is)")  # fmt: skip
    g = p.add_argument_group("sampling (trained checkpoints)").add_argument
    g("--ckpt", nargs="+", metavar="[NAME=]CKPT", help="stage-2 checkpoints (a teacher, its students)")
    g("--samplers", nargs="+", type=parse_sampler, help="[CKPT=]ddpm, ddim:N, rflow:N; CKPT= for one checkpoint only "
      "(" + " ".join(common.DEFAULT_SAMPLERS) + ")")  # fmt: skip
    g("--sample-volumes", type=positive_int, help="real volumes paired per sampler (4; quick 2)")
    g("--data-root", help="override the checkpoint's dataset root (e.g. data/mni152)")
    g("--guidance", type=float_in(0, None), help="guidance weight (default: each checkpoint's)")
    g("--privacy-volumes", type=nonnegative_int, default=0, help="nn-SSIM against this many training volumes")
    g("--segmenter", type=Path, help="Dice of this segmenter (evaluation/segmentation.py train) on the samples")
    g = p.add_argument_group("generation (the first --ckpt, else an untrained model)").add_argument
    g("--gen-config", choices=sorted(common.GEN_BLOCKS), help="default: diffusion on cuda, else diffusion_tiny")
    g("--gen-block", type=parse_size, help="its training block (default per config)")
    g("--gen-sizes", nargs="+", type=parse_size, help="label-map sizes (default: block multiples)")
    g("--gen-steps", type=positive_int, help="sampler steps per volume (10; quick 2)")
    g("--gen-repeats", type=positive_int, help="timed runs per size (2; quick 1)")
    g("--gen-window", choices=WINDOW_MODES, default="auto", help="window layout (generate.py --window)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Fill the defaults (full or ``--quick``) and check what argparse cannot: DataError, before any work."""
    from dataset.cli import read_stage_checkpoint
    from evaluation.segmenter import is_our_checkpoint
    from scripts.bench.build import EMBEDDED, class_table_data

    for key, values in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, values[int(args.quick)])
    check_unique(args.seeds, "--seeds")
    args.variants = parse_variants(args.variants or [], args.models)
    if args.dataset and args.sizes:
        raise DataError("--dataset: its volumes are the training data and their shape the size (no --sizes)")
    if args.class_tables and not args.dataset:
        raise DataError("--class-tables needs --dataset (a dataset config with a label_table)")
    if args.config_dir is not None and not args.config_dir.is_dir():
        raise DataError(f"--config-dir {args.config_dir} is not a folder")
    try:
        cfg = None if args.config_dir is None else str(args.config_dir)
        args.class_data = {t: class_table_data(args.dataset, cfg, t or "table") if args.dataset else EMBEDDED
                           for t in check_unique(args.class_tables, "--class-tables") or [None]}  # fmt: skip
    except Exception as err:  # noqa: BLE001 - Hydra's own errors (no such config, bad override): the user's to fix
        raise DataError(f"--dataset {args.dataset}: {error_reason(err, 300)}") from None
    args.sizes = args.sizes or (
        [] if args.dataset else list(common.QUICK_SIZES if args.quick else common.DEFAULT_SIZES)
    )
    pairs = [(i.partition("=")[0], i.partition("=")[2]) if "=" in i else (i, i) for i in args.ckpt or []]
    check_unique([n for n, _ in pairs], "--ckpt names")
    for name, path in pairs:
        read_stage_checkpoint(path, "diffusion", f"--ckpt {name}")
    args.ckpt = {n: Path(path) for n, path in pairs}
    if unknown := sorted({c for c, _, _ in args.samplers if c is not None} - set(args.ckpt)):
        raise DataError(f"--samplers {unknown[0]}=...: no --ckpt of that name")
    if args.segmenter is not None and not (args.segmenter.is_file() and is_our_checkpoint(args.segmenter)):
        raise DataError(f"--segmenter {args.segmenter}: not a segmenter checkpoint (evaluation/segmentation.py)")


def parse_variants(items: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """``--variants NAME:KEY=VALUE,...`` -> {name: VQGANModule arguments}, values read as YAML scalars; DataError for
    a repeated name, an argument VQGANModule does not take, or a model that is not a VQ-GAN."""
    import inspect

    import yaml

    from vq_gan_3d.module import VQGANModule

    if not items:
        return {}
    if others := [m for m in models if common.MODELS[m].stage != "vqgan"]:
        raise DataError(f"--variants change VQ-GAN arguments; --models {others[0]} is not a VQ-GAN (pick VQ-GANs)")
    known = set(inspect.signature(VQGANModule.__init__).parameters) - {"self"}
    variants: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, spec = item.partition(":")
        if not sep or not name:
            raise DataError(f"--variants {item!r}: expected NAME:KEY=VALUE,... (NAME: for the config as it is)")
        if name in variants:
            raise DataError(f"--variants: {name!r} given twice")
        variants[name] = {}
        for pair in filter(None, spec.split(",")):
            key, eq, value = pair.partition("=")
            if not eq or key not in known:
                raise DataError(f"--variants {name}: {pair!r} is not KEY=VALUE with KEY a VQGANModule argument")
            variants[name][key] = yaml.safe_load(value)
    return variants


def read_report(path: Path) -> dict[str, Any] | None:
    """The JSON report this benchmark wrote at ``path`` (or in the folder ``path``; any schema version), else None."""
    try:
        data = json.loads((path / RECORD if path.is_dir() else path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA.rsplit("/", 1)[0] + "/")
    return data if ours else None


def run(args: argparse.Namespace, device: Any, argv: list[str]) -> dict[str, Any]:
    """Every section; a failed one is reported and the others still run. Returns the report."""
    from scripts.bench.generation import bench_generation
    from scripts.bench.sampling import bench_sampling
    from scripts.bench.training import bench_training

    args.gen_config = args.gen_config or ("diffusion" if device.type == "cuda" else "diffusion_tiny")
    t_start = time.perf_counter()
    hidden = ("class_data", "log_level")
    settings = {k: v for k, v in vars(args).items() if k not in hidden}
    settings.update(device=str(device), sizes=[size_str(s) for s in args.sizes], output_rtol=common.OUTPUT_RTOL,
                    gen_sizes=[size_str(s) for s in args.gen_sizes or []], image_atol=common.IMAGE_ATOL)  # fmt: skip
    report: dict[str, Any] = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ["benchmark.py", *argv], "machine": common.machine_info(device), "versions": common.versions(),
        "settings": settings, "section_time_s": {},
    }  # fmt: skip
    for name, fn in {"training": bench_training, "sampling": bench_sampling, "generation": bench_generation}.items():
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
    report["machine"]["load_average_end"] = common.load_average()
    report["total_time_s"] = round(time.perf_counter() - t_start, 1)
    return report


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Check every option and input, claim ``--out``, run, write the report and its summary."""
    import warnings

    import pytorch_lightning  # noqa: F401 - sets its loggers to INFO on import; quieten them after that

    quiet = dict.fromkeys(("pytorch_lightning", "lightning_fabric", "lightning", "torch._dynamo", "torch._inductor"),
                          logging.WARNING)  # fmt: skip
    quiet.update(dict.fromkeys(("diffusion", "dataset", "vq_gan_3d"), logging.ERROR))  # e.g. the random-VGG note
    # quiet for this run only: a caller in the same process (a test, a notebook) keeps its own logging
    with quieted(quiet), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pytorch_lightning|lightning_fabric")
        return measure(args, argv)


@contextlib.contextmanager
def quieted(levels: dict[str, int]) -> Iterator[None]:
    """Set the given loggers' levels for the duration of the block, then restore the levels they had."""
    before = {name: logging.getLogger(name).level for name in levels}
    try:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def measure(args: argparse.Namespace, argv: list[str]) -> int:
    """:func:`command` with the loggers quietened: check, claim ``--out``, measure, write the report."""
    from dataset.files import OutputFolder, atomic_write_text, write_run_record
    from evaluation.report import jsonable
    from scripts.bench.report import compare, markdown

    device = pick_device(args.device)
    check_args(args)
    old = read_report(args.compare) if args.compare is not None else None
    if args.compare is not None and old is None:
        raise DataError(f"--compare {args.compare}: no benchmark report there (a JSON file with a {SCHEMA!r} schema)")
    with OutputFolder(args.out, args.overwrite) as out:
        plan = out.plan([RECORD, SUMMARY], RECORD, tool="benchmark")
        report = run(args, device, argv)
        if old is not None:
            report["compare"] = compare(report, old, str(args.compare))
        report = jsonable(report)
        text = markdown(report)
        atomic_write_text(out.path / SUMMARY, text + "\n")
        plan.remove_stale()
        write_run_record(out.path / RECORD, {"tool": "benchmark", **report, "outputs": [RECORD, SUMMARY]})
    sys.stdout.write(text + "\n")
    log.info("wrote %s (%.0f s)", args.out, report["total_time_s"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)
