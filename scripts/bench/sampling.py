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


def sample_one(
    model: torch.nn.Module,
    seg: torch.Tensor,
    sampler: str,
    steps: int | None,
    guidance: float | None,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """One ``model.sample`` call on a (1, K, D, H, W) one-hot map; returns the (1, 1, D, H, W) image and seconds."""
    gen = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    t0 = time.perf_counter()
    x = model.sample(seg, sampler=sampler, steps=steps, guidance=guidance, generator=gen)
    synchronize(device)
    return x, time.perf_counter() - t0


def _ceiling(model: Any, vols: list[dict], segs: list[torch.Tensor], reals: list[torch.Tensor], device: Any) -> dict:
    """The first stage's own reconstruction quality of the real volumes: what no sampler can beat."""
    from evaluation.image_metrics import psnr, ssim3d

    ceiling: dict[str, list[float]] = {"ssim": [], "psnr": []}
    for v, seg, real in zip(vols, segs, reals):
        rec = model.decode_latents(model.first_stage.encode(torch.as_tensor(v["image"])[None].to(device)), seg)
        ceiling["ssim"].append(ssim3d(to_unit(rec[0, 0]), real)[0])
        ceiling["psnr"].append(psnr(to_unit(rec[0, 0]), real))
    return {k: statistics.fmean(v) for k, v in ceiling.items()}


def bench_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time per volume and paired SSIM/PSNR of each sampler on each given checkpoint."""
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
    for key, path in ckpts:
        model = load_model(Path(path), device)
        hp = model.hparams
        info = {
            "path": str(path),
            "objective": hp.objective,
            "prediction_type": hp.prediction_type,
            "num_train_timesteps": hp.num_train_timesteps,
            "samplers": list(model.schedule.samplers),
            "guidance": hp.guidance if args.guidance is None else args.guidance,
        }
        out["checkpoints"][key] = info
        vols = real_volumes(model, args.split, args.sample_volumes, args.data_root)
        info["volumes"] = [str(v["id"]) for v in vols]
        segs = [one_hot(torch.as_tensor(v["label"])[None], model.label_nc).to(device) for v in vols]
        reals = [to_unit(torch.as_tensor(v["image"])[0]) for v in vols]
        info["first_stage_ceiling"] = _ceiling(model, vols, segs, reals, device)
        warm = "ddim" if "ddim" in model.schedule.samplers else "rflow"
        sample_one(model, segs[0], warm, 2, args.guidance, 0, device)  # warm-up (allocations, kernels)
        for sampler, steps in args.samplers:
            n_steps = hp.num_train_timesteps if sampler == "ddpm" else steps
            row: dict[str, Any] = {
                "checkpoint": key,
                "sampler": sampler,
                "label": f"{sampler}-{n_steps}",
                "steps": n_steps,
            }
            out["results"].append(row)
            if sampler not in model.schedule.samplers:
                hint = " (pass --rflow-ckpt: trained with model=diffusion_rflow)" if sampler == "rflow" else ""
                row.update(
                    status="not applicable",
                    reason=f"checkpoint objective {hp.objective!r} samples with "
                    f"{list(model.schedule.samplers)} only{hint}",
                )
                continue
            times, ssims, psnrs = [], [], []
            for i, (seg, real) in enumerate(zip(segs, reals)):
                x, elapsed = sample_one(model, seg, sampler, steps, args.guidance, args.seed + i, device)
                times.append(elapsed)
                ssims.append(ssim3d(to_unit(x[0, 0]), real)[0])
                psnrs.append(psnr(to_unit(x[0, 0]), real))
            row.update(
                status="ok",
                time_per_volume_s=summary(times),
                ssim=statistics.fmean(ssims),
                psnr=statistics.fmean(psnrs),
                ssim_per_volume=ssims,
                psnr_per_volume=psnrs,
            )
            log.info(
                "sampling %s %s: %.2f s/volume, SSIM %.3f, PSNR %.2f dB",
                key,
                row["label"],
                row["time_per_volume_s"]["median"],
                row["ssim"],
                row["psnr"],
            )
        del model
        free_memory(device)
    _relative_to_ddpm(out["results"])
    return out


def _relative_to_ddpm(results: list[dict[str, Any]]) -> None:
    """Speed-up and quality difference of every sampler against the DDPM row (in place)."""
    ref = next((r for r in results if r["sampler"] == "ddpm" and r.get("status") == "ok"), None)
    if ref is None:
        return
    for r in results:
        if r.get("status") == "ok":
            r["speedup_vs_ddpm"] = ref["time_per_volume_s"]["median"] / r["time_per_volume_s"]["median"]
            r["ssim_minus_ddpm"] = r["ssim"] - ref["ssim"]
            r["psnr_minus_ddpm"] = r["psnr"] - ref["psnr"]
