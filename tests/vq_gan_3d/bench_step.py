"""Before/after timing and peak memory of one VQ-GAN training step (issue 13), without a Trainer.

Not a test: ``python -m tests.vq_gan_3d.bench_step`` times the step of ``config/model/<config>.yaml`` (paper
widths, GAN on, LPIPS weight 0 unless ``--lpips``) at ``--size``, alternating the variants in one process, then runs
one child process per variant to read its peak resident set (``ru_maxrss``). Variants:

* ``before``: SPADE conv over the one-hot map and two gamma/beta convs (``lookup=False``), discriminator weight
  gradients in the generator step (``toggle_discriminator_grad=False``), the codebook's former 64 MB distance
  chunks (``vq_gan_3d.codebook._DISTANCE_CHUNK_ELEMENTS = 2**24`` while its steps run), PyTorch's own conv
  backend choice (``cpu_onednn=False`` on every ``SamePadConv3d``);
* ``after``: the defaults;
* ``after+ckpt``: the defaults with ``checkpointing=True``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import vq_gan_3d.codebook as codebook_mod
from tests.vq_gan_3d.legacy_step import adam_pair, run_module_step
from vq_gan_3d.module import VQGANModule

log = logging.getLogger(__name__)
VARIANTS = ("before", "after", "after+ckpt")
OLD_CHUNK = 2**24  # the codebook's distance chunk before issue 13
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "model"


def build(config: str, variant: str, label_nc: int, lpips: bool, seed: int = 0) -> VQGANModule:
    """A VQ-GAN of ``config/model/<config>.yaml`` with the GAN on from the first batch, in ``variant``'s form."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config, overrides=[f"+dataset.label_nc={label_nc}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    args = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "dataset"}
    args.update(label_nc=label_nc, discriminator_iter_start=0, gradient_clip_val=None)
    if not lpips:
        args["perceptual_weight"] = 0.0
    args["toggle_discriminator_grad"] = variant != "before"
    args["checkpointing"] = variant == "after+ckpt"
    torch.manual_seed(seed)
    model = VQGANModule(**args)
    for m in model.modules():
        for attr in ("lookup", "cpu_onednn"):
            if hasattr(m, attr):
                setattr(m, attr, variant != "before")
    return model.train()


def batch_of(size: tuple[int, int, int], label_nc: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One (1, 1, D, H, W) image and a piecewise-constant label map (random classes on 8^3-voxel cells)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, label_nc, (1, 1, *(max(s // 8, 1) for s in size)), generator=g).float()
    label = F.interpolate(coarse, size=size, mode="nearest").long()
    image = (label.float() / label_nc * 2 - 1 + 0.05 * torch.randn(label.shape, generator=g)).clamp(-1, 1)
    return {"image": image, "label": label}


def time_steps(models: dict[str, VQGANModule], batch: dict[str, torch.Tensor], steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each model, variants alternated step by step (first step is warm-up)."""
    opts = {k: adam_pair(m) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    new_chunk = codebook_mod._DISTANCE_CHUNK_ELEMENTS
    for i in range(steps + 1):
        for k, m in models.items():
            codebook_mod._DISTANCE_CHUNK_ELEMENTS = OLD_CHUNK if k == "before" else new_chunk
            t = time.perf_counter()
            run_module_step(m, batch, *opts[k])
            if i > 0:
                times[k].append(time.perf_counter() - t)
    codebook_mod._DISTANCE_CHUNK_ELEMENTS = new_chunk
    return times


def _rss_mib(field: str = "VmHWM") -> float:
    """This process's resident set in MiB from /proc/self/status: ``VmHWM`` the peak (per address space, so
    not inherited from the parent that forked it, unlike ``ru_maxrss`` after exec on Linux), ``VmRSS`` now.
    Without /proc: ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """``{"peak", "base"}`` resident set (MiB) of a fresh process that runs ``args.mem_steps`` steps of
    ``variant``: its peak, and its size once model, optimisers and batch exist (before the first step)."""
    cmd = [sys.executable, "-m", "tests.vq_gan_3d.bench_step", "--child", variant, "--config", args.config,
           "--size", *map(str, args.size), "--label-nc", str(args.label_nc),
           "--mem-steps", str(args.mem_steps)]  # fmt: skip
    if args.lpips:
        cmd.append("--lpips")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, measure, log and print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="vq_gan_spade", help="config/model/<name>.yaml")
    p.add_argument("--size", type=int, nargs=3, default=[32, 64, 64], help="D H W")
    p.add_argument("--label-nc", type=int, default=37, help="classes K (37: AutoPET)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--mem-steps", type=int, default=2, help="steps per memory child")
    p.add_argument("--lpips", action="store_true", help="keep the config's LPIPS weight (needs VGG16 weights)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory children")
    p.add_argument("--no-timing", action="store_true", help="only the per-variant memory children")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = tuple(args.size)
    batch = batch_of(size, args.label_nc)
    if args.child:
        model = build(args.config, args.child, args.label_nc, args.lpips)
        if args.child == "before":
            codebook_mod._DISTANCE_CHUNK_ELEMENTS = OLD_CHUNK
        opt_g, opt_d = adam_pair(model)
        base = _rss_mib("VmRSS")
        for _ in range(args.mem_steps):
            run_module_step(model, batch, opt_g, opt_d)
        result = {"peak": _rss_mib("VmHWM"), "base": base}
        print(json.dumps(result))  # noqa: T201 - the parent reads this line
        return result
    result: dict[str, Any] = {
        "config": args.config, "size": list(size), "label_nc": args.label_nc, "threads": torch.get_num_threads(),
        "lpips": args.lpips,
    }  # fmt: skip
    if not args.no_memory:  # first, while this process is still small
        mem = {v: peak_rss_mib(args, v) for v in VARIANTS}
        rss = {v: round(m["peak"], 1) for v, m in mem.items()}
        work = {v: round(m["peak"] - m["base"], 1) for v, m in mem.items()}  # what the step itself adds
        result.update(
            peak_rss_mib=rss, base_rss_mib={v: round(m["base"], 1) for v, m in mem.items()}, step_working_mib=work,
            rss_ratio_after_before=round(rss["after"] / rss["before"], 3),
            rss_ratio_ckpt_before=round(rss["after+ckpt"] / rss["before"], 3),
            working_ratio_after_before=round(work["after"] / work["before"], 3),
            working_ratio_ckpt_before=round(work["after+ckpt"] / work["before"], 3),
        )  # fmt: skip
    if not args.no_timing:
        models = {v: build(args.config, v, args.label_nc, args.lpips) for v in VARIANTS}
        times = time_steps(models, batch, args.steps)
        best = {k: min(v) for k, v in times.items()}  # the CPU may be shared: noise only ever adds time
        result.update(
            step_s={k: [round(t, 3) for t in v] for k, v in times.items()},
            min_s={k: round(v, 3) for k, v in best.items()},
            time_ratio_after_before=round(best["after"] / best["before"], 3),
            time_ratio_ckpt_before=round(best["after+ckpt"] / best["before"], 3),
        )
    print(json.dumps(result))  # noqa: T201 - the summary is this tool's output
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
