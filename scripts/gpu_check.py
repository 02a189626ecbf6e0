"""GPU check: the paper-size numbers a GPU gives, in one run sized to finish within 8 minutes on one 80 GB GPU.

    python scripts/gpu_check.py --out runs/gpu_check                 # on the GPU machine
    python scripts/gpu_check.py --tiny --device cpu --out /tmp/gpu   # the same code at tiny size (CI)

Parts (random weights and data: time and memory do not depend on them), measured by the benchmark's own code
(:mod:`scripts.bench`):

* ``vqgan``: a training step of the paper-size VQ-GAN, both decoders (normal and SPADE), at the paper block
  32x256x256 in bf16-mixed, with and without activation checkpointing: seconds per step, peak memory.
* ``denoiser``: a training step of the paper denoiser (Unet3D_SPADE) at the paper latent (that block through the
  VQ-GAN), with ``torch.compile`` off and on.
* ``generation``: one 37-class 128x512x512 label map through the generation pipeline, the rectified-flow teacher at
  30 steps with guidance 2.5 (two passes per step) and a distilled student's settings, 4 steps with guidance folded
  (one pass per step); seconds split into denoising and decoding, peak memory; ``torch.compile`` off and on.

Each measurement runs on its own; one that fails (out of memory, no compiler) is recorded with its reason and the
others go on. ``--out DIR`` receives ``gpu_check.json`` (the report and run record, naming the device); ``--tiny``
swaps in the tiny configs and 16^3-32^3 sizes so the default test suite runs this file on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dataset.cli import ArgumentParser, nonnegative_int, pick_device, positive_int, run_cli

log = logging.getLogger("gpu_check")

PARTS = ("vqgan", "denoiser", "generation")
RECORD = "gpu_check.json"
#: (full, tiny): VQ-GAN configs, their block, the stage-2 config, generation size, label classes
SIZES: dict[str, tuple[Any, Any]] = {
    "vqgan_configs": (("vq_gan_3d", "vq_gan_spade"), ("vq_gan_3d_tiny", "vq_gan_spade_tiny")),
    "block": ((32, 256, 256), (16, 16, 16)),
    "diffusion": (("diffusion_rflow", "vq_gan_spade"), ("diffusion_rflow_tiny", "vq_gan_spade_tiny")),
    "generation_size": ((128, 512, 512), (32, 32, 32)),
    "label_nc": (37, 37),
}
TEACHER = {"steps": 30, "guidance": 2.5}
STUDENT = {"steps": 4, "guidance": 1.0}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help=f"output folder ({RECORD})")
    p.add_argument("--overwrite", action="store_true", help="replace a previous check's report in --out")
    p.add_argument("--tiny", action="store_true", help="tiny configs and sizes (runs on a CPU in seconds)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision of the training steps")
    p.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed training steps first")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed training steps")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile measurements")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    return p


def train_row(model: torch.nn.Module, args: argparse.Namespace, pick: Callable[[str], Any]) -> dict:
    """Warm-up + timed training steps of ``model`` on random blocks: seconds per step, peak memory."""
    from evaluation.report import summarise
    from scripts.bench.common import PeakMemory, Volumes
    from scripts.bench.training import train_steps

    memory = PeakMemory(args.device)
    data = Volumes(args.warmup + args.repeats, pick("block"), int(model.hparams.label_nc), args.seed)
    res = train_steps(model, data, args.device, args.precision, memory, args.warmup, args.seed)
    return {"step_s": summarise(res["step_times_s"]), "first_step_s": round(res["first_step_s"], 3),
            "memory": res["memory"], "memory_kind": memory.kind}  # fmt: skip


def vqgan_row(args: argparse.Namespace, pick: Callable[[str], Any], config: str, checkpointing: bool) -> dict:
    from scripts.bench.build import build_vqgan

    torch.manual_seed(args.seed)
    model, changes = build_vqgan(config, checkpointing=checkpointing, label_nc=pick("label_nc"))
    return {"changes": changes, **train_row(model, args, pick)}


def denoiser_row(args: argparse.Namespace, pick: Callable[[str], Any], compile: bool) -> dict:
    from scripts.bench.build import build_diffusion, describe
    from scripts.bench.common import ModelSpec

    (config, first_stage), block = pick("diffusion"), pick("block")
    torch.manual_seed(args.seed)
    model, _ = build_diffusion(config, first_stage, block, label_nc=pick("label_nc"), compile=compile)
    return {
        "latent": describe(model, ModelSpec("diffusion", config), block)["latent"],
        **train_row(model, args, pick),
    }


def generation_row(args: argparse.Namespace, pick: Callable[[str], Any], compile: bool, sampling: dict) -> dict:
    """The teacher's or the student's sampling settings on one big label map (the same untrained network)."""
    from diffusion.generation.pipeline import GenerationSettings
    from scripts.bench.build import build_diffusion, fit_random_statistics
    from scripts.bench.common import PeakMemory
    from scripts.bench.generation import Runner

    (config, first_stage), block = pick("diffusion"), pick("block")
    torch.manual_seed(args.seed)
    model, _ = build_diffusion(config, first_stage, block, label_nc=pick("label_nc"), compile=compile)
    model = fit_random_statistics(model, block, args.seed).eval().to(args.device)
    precision = "bf16" if args.device.type == "cuda" else "32"
    settings = GenerationSettings(
        "rflow", sampling["steps"], sampling["guidance"], seed=args.seed, precision=precision
    )
    memory = PeakMemory(args.device)
    with tempfile.TemporaryDirectory(prefix="medlsdm-gpu-check-") as tmp:
        res = Runner(model, memory, args.device, Path(tmp), args.seed).once(pick("generation_size"), settings)[0]
    return {**{k: round(v, 3) for k, v in res.items() if k != "memory"}, "memory": res["memory"],
            "memory_kind": memory.kind}  # fmt: skip


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Claim ``--out``, run every part, write the report."""
    from dataset.files import OutputFolder, write_run_record
    from evaluation.report import jsonable
    from scripts.bench.common import machine_info, measured, versions

    args.device = pick_device(args.device)

    def pick(key: str) -> Any:
        return SIZES[key][1 if args.tiny else 0]

    compiles = (False,) if args.no_compile else (False, True)
    jobs: dict[str, list[tuple[dict, Callable[[], dict]]]] = {
        "vqgan": [({"config": c, "block": list(pick("block")), "checkpointing": k},
                   partial(vqgan_row, args, pick, c, k)) for c in pick("vqgan_configs") for k in (False, True)],
        "denoiser": [({"config": pick("diffusion")[0], "block": list(pick("block")), "compile": k},
                      partial(denoiser_row, args, pick, k)) for k in compiles],
        "generation": [({"model": name, "size": list(pick("generation_size")), "label_nc": pick("label_nc"), **s,
                         "passes_per_step": 1 if s["guidance"] in (0.0, 1.0) else 2, "compile": k},
                        partial(generation_row, args, pick, k, s))
                       for k in compiles for name, s in (("teacher", TEACHER), ("student", STUDENT))],
    }  # fmt: skip
    with OutputFolder(args.out, args.overwrite) as out:
        plan = out.plan([RECORD], RECORD, tool="gpu_check")
        t0 = time.perf_counter()
        report: dict[str, Any] = {"command": ["gpu_check.py", *argv], "tiny": args.tiny, "device": str(args.device),
                                  "machine": machine_info(args.device), "versions": versions(),
                                  "precision": args.precision}  # fmt: skip
        for part in args.parts:
            report[part] = []
            for row, fn in jobs[part]:
                measured(row, f"{part} {row}", fn, args.device)
                log.info("%s %s", part, row)
                report[part].append(row)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        plan.remove_stale()
        write_run_record(out.path / RECORD, {"tool": "gpu_check", **jsonable(report), "outputs": [RECORD]})
    failed = [r for part in args.parts for r in report[part] if r["status"] != "ok"]
    log.info("wrote %s (%d measurement(s) failed) in %.0f s", args.out, len(failed), report["wall_s"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
