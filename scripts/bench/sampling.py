"""Samplers on trained checkpoints: time per volume and paired SSIM/PSNR against the real volumes of the split.

The real volumes come from the checkpoint's plain dataset information through the fixed table of
:mod:`dataset.registry`: nothing read from the checkpoint names code to build (SPEC section 10).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from scripts.bench.common import summary
from scripts.bench.machine import free_memory, synchronize

log = logging.getLogger("benchmark")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model scale [-1, 1] → [0, 1] (the image metrics' convention, data range 1)."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def real_volumes(model: torch.nn.Module, split: str, n: int, data_root: str | None) -> list[dict[str, Any]]:
    """The first n (image, label) pairs of the checkpoint's dataset split.

    Built by :func:`dataset.registry.build_split` from the checkpoint's plain data info (name, sizes, root): the
    dataset class comes from that fixed table; anything that names code (``_target_``) is refused.

    Raises:
        DataError: no dataset recorded, unknown or malformed fields.
    """
    from dataset.contract import DataError
    from dataset.registry import build_split

    info = model.hparams.get("data_info")
    if not info:
        raise DataError("the checkpoint records no dataset (data_info); cannot pair real volumes")
    ds = build_split(info, split, data_root)
    return [ds[i] for i in range(min(n, len(ds)))]


def bench_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time per volume and paired SSIM/PSNR of each sampler on each given checkpoint, with the first stage's own
    reconstruction quality of the same volumes (what no sampler can beat) and each sampler against DDPM."""
    from dataset.contract import one_hot
    from evaluation.image_metrics import psnr, ssim3d
    from scripts.generate import load_model

    ckpts = [(key, path) for key, path in (("ckpt", args.ckpt), ("rflow_ckpt", args.rflow_ckpt)) if path]
    if not ckpts:
        return {
            "status": "skipped",
            "reason": "no --ckpt given: pass a short-trained diffusion checkpoint (train/train_diffusion.py "
            "experiment=mni152_diffusion_cpu) and, for rectified flow, --rflow-ckpt (model=diffusion_rflow)",
        }
    out: dict[str, Any] = {
        "status": "ok",
        "metric_convention": "images mapped from [-1, 1] to [0, 1]; data range 1; evaluation.image_metrics "
        "psnr and ssim3d (Gaussian window sigma 1.5, 11 taps or the largest odd size that fits)",
        "split": args.split,
        "checkpoints": {},
        "results": [],
    }

    def quality(images: list[torch.Tensor]) -> tuple[list[float], list[float]]:
        pairs = [(to_unit(x[0, 0]), real) for x, real in zip(images, reals)]
        return [ssim3d(x, real)[0] for x, real in pairs], [psnr(x, real) for x, real in pairs]

    for key, path in ckpts:
        model = load_model(Path(path), device)
        hp, vq, samplers = model.hparams, model.first_stage, list(model.schedule.samplers)
        vols = real_volumes(model, args.split, args.sample_volumes, args.data_root)
        segs = [one_hot(torch.as_tensor(v["label"])[None], model.label_nc).to(device) for v in vols]
        reals = [to_unit(torch.as_tensor(v["image"])[0]) for v in vols]
        images = [torch.as_tensor(v["image"])[None].to(device) for v in vols]
        with torch.no_grad():
            recs = [
                vq.decode(vq.encode(x), seg if vq.decoder_type == "spade" else None) for x, seg in zip(images, segs)
            ]
        ceiling = quality(recs)
        out["checkpoints"][key] = {
            "path": str(path),
            "objective": hp.objective,
            "prediction_type": hp.prediction_type,
            "num_train_timesteps": hp.num_train_timesteps,
            "samplers": samplers,
            "guidance": hp.guidance if args.guidance is None else args.guidance,
            "volumes": [str(v["id"]) for v in vols],
            "first_stage_ceiling": {"ssim": statistics.fmean(ceiling[0]), "psnr": statistics.fmean(ceiling[1])},
        }
        model.sample(segs[0], sampler=samplers[-1], steps=2, guidance=args.guidance)  # warm-up: allocations, kernels
        for sampler, steps in args.samplers:
            n_steps = hp.num_train_timesteps if sampler == "ddpm" else steps
            row: dict[str, Any] = {"checkpoint": key, "sampler": sampler, "label": f"{sampler}-{n_steps}"}
            out["results"].append(row)
            if sampler not in samplers:
                hint = " (pass --rflow-ckpt: trained with model=diffusion_rflow)" if sampler == "rflow" else ""
                reason = f"checkpoint objective {hp.objective!r} samples with {samplers} only{hint}"
                row.update(status="not applicable", reason=reason)
                continue
            times, samples = [], []
            for i, seg in enumerate(segs):
                gen = torch.Generator(device=device).manual_seed(args.seed + i)
                synchronize(device)
                t0 = time.perf_counter()
                samples.append(model.sample(seg, sampler=sampler, steps=steps, guidance=args.guidance, generator=gen))
                synchronize(device)
                times.append(time.perf_counter() - t0)
            ssims, psnrs = quality(samples)
            row.update(
                status="ok",
                steps=n_steps,
                time_per_volume_s=summary(times),
                ssim_per_volume=ssims,
                psnr_per_volume=psnrs,
                ssim=statistics.fmean(ssims),
                psnr=statistics.fmean(psnrs),
            )
            log.info(
                "sampling %s %s: %.2f s/volume, SSIM %.3f", key, row["label"], summary(times)["median"], row["ssim"]
            )
        model = None
        free_memory(device)
    ok = [r for r in out["results"] if r.get("status") == "ok"]
    ref = next((r for r in ok if r["sampler"] == "ddpm"), None)
    for r in ok if ref is not None else []:
        r["speedup_vs_ddpm"] = ref["time_per_volume_s"]["median"] / r["time_per_volume_s"]["median"]
        r["ssim_minus_ddpm"], r["psnr_minus_ddpm"] = r["ssim"] - ref["ssim"], r["psnr"] - ref["psnr"]
    return out
