"""GPU check: the paper-size numbers a GPU gives, in one run sized to finish within 8 minutes on one 80 GB GPU.

    python scripts/gpu_check.py --out runs/gpu_check.json                 # on the GPU machine
    python scripts/gpu_check.py --tiny --device cpu --out /tmp/gpu.json   # the same code at tiny size (CI)

Parts (random weights and data: time and memory do not depend on them):

* ``vqgan``: a training step of the paper-size VQ-GAN, both decoders (normal and SPADE), at the paper block
  32x256x256 in bf16-mixed, with and without activation checkpointing: seconds per step, peak memory.
* ``denoiser``: a training step of the paper denoiser (Unet3D_SPADE) at the paper latent (that block through the
  VQ-GAN), with ``torch.compile`` off and on.
* ``generation``: one 37-class 128x512x512 label map through the generation pipeline, the rectified-flow teacher at
  30 steps with guidance 2.5 (two passes per step) and a distilled student's settings, 4 steps with guidance folded
  (one pass per step); seconds split into denoising and decoding, peak memory; ``torch.compile`` off and on.

Each measurement runs on its own; one that fails (out of memory, no compiler) is recorded with its reason and the
others go on. The JSON report names the device (:func:`scripts.bench.machine.machine_info`). ``--tiny`` swaps in the
tiny configs and 16^3-32^3 sizes so the default test suite runs this file on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("gpu_check")

PARTS = ("vqgan", "denoiser", "generation")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    p.add_argument("--tiny", action="store_true", help="tiny configs and sizes (runs on a CPU in seconds)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision of the training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--repeats", type=int, default=3, help="timed training steps")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile measurements")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.exit(2, "error: --device cuda: no CUDA GPU here (use --device cpu, with --tiny)\n")
    if args.warmup < 0 or args.repeats < 1:
        p.exit(2, "error: need --warmup >= 0 and --repeats >= 1\n")
    return args


def measured(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is a row with its reason, not the end of the check."""
    from scripts.bench.common import error_reason
    from scripts.bench.machine import free_memory

    try:
        return {"status": "ok", **fn()}
    except Exception as err:  # out of memory, no C++ compiler for torch.compile: recorded, the next one runs
        log.warning("measurement failed: %s", error_reason(err))
        return {"status": "failed", "reason": error_reason(err)}
    finally:
        free_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def train_row(model: torch.nn.Module, stage: str, size: tuple[int, ...], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up + timed training steps of ``model`` in a Trainer from config/trainer; seconds per step, peak memory."""
    from scripts.bench.machine import PeakMemory
    from scripts.bench.training import train_steps

    device = torch.device(args.device)
    memory = PeakMemory(device)
    steps = argparse.Namespace(warmup=args.warmup, repeats=args.repeats, batch_size=1, seed=args.seed, labels=None)
    res = train_steps(model, stage, size, steps, device, args.precision, memory)
    return {"step_s": res["step_time_s"], "first_step_s": round(res["first_step_s"], 3),
            "memory": res["memory"], "memory_kind": memory.kind}  # fmt: skip


def check_vqgan(args: argparse.Namespace, pick: Callable[[str], Any]) -> list[dict[str, Any]]:
    from scripts.bench.build import build_vqgan

    rows = []
    block = pick("block")
    for config in pick("vqgan_configs"):
        for checkpointing in (False, True):

            def run(config: str = config, checkpointing: bool = checkpointing) -> dict[str, Any]:
                torch.manual_seed(args.seed)
                model, changes = build_vqgan(config, checkpointing=checkpointing, label_nc=pick("label_nc"))
                return {"changes": changes, **train_row(model, "vqgan", block, args)}

            row = {"config": config, "block": list(block), "checkpointing": checkpointing, **measured(run)}
            log.info("vqgan %s checkpointing=%s: %s", config, checkpointing, row.get("step_s", row.get("reason")))
            rows.append(row)
    return rows


def check_denoiser(args: argparse.Namespace, pick: Callable[[str], Any]) -> list[dict[str, Any]]:
    from scripts.bench.build import build_diffusion

    config, first_stage = pick("diffusion")
    block = pick("block")
    rows = []
    for compile in (False,) if args.no_compile else (False, True):

        def run(compile: bool = compile) -> dict[str, Any]:
            torch.manual_seed(args.seed)
            model, _ = build_diffusion(config, first_stage, block, label_nc=pick("label_nc"), compile=compile)
            latent = [model.first_stage.embedding_dim, *(b // f for b, f in zip(block, model.latent_factor))]
            return {"latent": latent, **train_row(model, "diffusion", block, args)}

        row = {"config": config, "block": list(block), "compile": compile, **measured(run)}
        log.info("denoiser compile=%s: %s", compile, row.get("step_s", row.get("reason")))
        rows.append(row)
    return rows


def check_generation(args: argparse.Namespace, pick: Callable[[str], Any]) -> list[dict[str, Any]]:
    """The teacher's and the student's sampling settings on one big label map (same untrained network)."""
    import numpy as np

    from diffusion.generation.pipeline import GenerationSettings, LabelVolume, generate
    from scripts.bench.build import build_diffusion, fit_random_statistics
    from scripts.bench.common import random_label
    from scripts.bench.distill import split_timing
    from scripts.bench.machine import PeakMemory, synchronize

    device = torch.device(args.device)
    config, first_stage = pick("diffusion")
    size = pick("generation_size")
    rows = []
    for compile in (False,) if args.no_compile else (False, True):
        for name, sampling in (("teacher", TEACHER), ("student", STUDENT)):

            def run(compile: bool = compile, sampling: dict = sampling) -> dict[str, Any]:
                torch.manual_seed(args.seed)
                model, _ = build_diffusion(config, first_stage, pick("block"), label_nc=pick("label_nc"),
                                           compile=compile)  # fmt: skip
                fit_random_statistics(model, pick("block"), args.seed)
                model = model.eval().to(device)
                vol = LabelVolume("gpu_check", random_label(size, model.label_nc, args.seed), np.eye(4), "gpu_check")
                precision = "bf16" if device.type == "cuda" else "32"
                settings = GenerationSettings(sampler="rflow", steps=sampling["steps"], guidance=sampling["guidance"],
                                              seed=args.seed, precision=precision)  # fmt: skip
                memory = PeakMemory(device)
                memory.reset()
                with (
                    tempfile.TemporaryDirectory(prefix="medlsdm-gpu-check-") as tmp,
                    split_timing(model) as (
                        denoise,
                        decode,
                    ),
                ):
                    synchronize(device)
                    t0 = time.perf_counter()
                    generate(model, [vol], Path(tmp), settings, overwrite=True, progress=False)
                    synchronize(device)
                    total = time.perf_counter() - t0
                return {"seconds": round(total, 3), "denoise_s": round(denoise.seconds, 3),
                        "decode_s": round(decode.seconds, 3), "memory": memory.result(),
                        "memory_kind": memory.kind}  # fmt: skip

            passes = 1 if sampling["guidance"] in (0.0, 1.0) else 2
            row = {"model": name, "size": list(size), "label_nc": pick("label_nc"), **sampling,
                   "passes_per_step": passes, "compile": compile, **measured(run)}  # fmt: skip
            log.info("generation %s compile=%s: %s", name, compile, row.get("seconds", row.get("reason")))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from scripts.bench.common import json_safe
    from scripts.bench.machine import machine_info, versions

    def pick(key: str) -> Any:
        return SIZES[key][1 if args.tiny else 0]

    device = torch.device(args.device)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"command": "python scripts/gpu_check.py " + " ".join(argv or sys.argv[1:]),
                              "tiny": args.tiny, "device": args.device, "machine": machine_info(device),
                              "versions": versions(), "precision": args.precision}  # fmt: skip
    checks = {"vqgan": check_vqgan, "denoiser": check_denoiser, "generation": check_generation}
    for part in args.parts:
        report[part] = checks[part](args, pick)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(report), indent=1) + "\n")
    failed = [r for part in args.parts for r in report[part] if r["status"] != "ok"]
    log.info("wrote %s (%d measurement(s) failed) in %.0f s", args.out, len(failed), report["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
