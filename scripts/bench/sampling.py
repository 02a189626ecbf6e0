"""Samplers on trained checkpoints (a teacher and its distilled students alike): seconds per volume, denoising and
decoding apart, and the paired quality of the same volumes over seeds (:class:`Judge`). The real volumes come from
the checkpoint's plain dataset information through :mod:`dataset.registry`: nothing read from a checkpoint names
code to build (SPEC section 10)."""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from typing import Any

import numpy as np
import torch

from evaluation.report import summarise
from scripts.bench.common import log, measured, timed_sampling

METRICS = ("ssim", "psnr", "nn_ssim", "dice")
TIMES = {"time_per_volume_s": "seconds", "denoise_s": "denoise_s", "decode_s": "decode_s"}  # row key: part


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model scale [-1, 1] → [0, 1] (the image metrics' convention, data range 1), on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def real_volumes(model: Any, split: str, n: int | None, data_root: str | None) -> list[dict[str, Any]]:
    """The first ``n`` (all: None) samples of the checkpoint's dataset split, built by
    :func:`dataset.registry.build_split` from its plain data info (DataError: none recorded, or it names code)."""
    from dataset.contract import DataError
    from dataset.registry import build_split

    info = model.hparams.get("data_info")
    if not info:
        raise DataError("the checkpoint records no dataset (data_info); cannot pair real volumes")
    ds = build_split(info, split, data_root)
    return [ds[i] for i in range(len(ds) if n is None else min(n, len(ds)))]


class Judge:
    """The paired quality of generated (1, 1, D, H, W) volumes in [-1, 1] against the real volumes of their label
    maps: ``evaluation.image_metrics`` SSIM / PSNR, the privacy audit's nearest-neighbour SSIM (the highest SSIM to
    any training volume, :func:`evaluation.privacy.privacy_audit`'s ``nn_ssim``) and a segmenter's mean Dice."""

    def __init__(self, vols: list[dict[str, Any]], train: list[dict[str, Any]], segmenter: Any) -> None:
        self.reals = [to_unit(torch.as_tensor(v["image"])[0]) for v in vols]
        self.labels = [torch.as_tensor(v["label"]).long() for v in vols]
        self.train = [to_unit(torch.as_tensor(v["image"])[0]) for v in train]
        self.segmenter = segmenter

    def dice(self, image: torch.Tensor, label: torch.Tensor) -> float:
        from evaluation.segmenter import Case, dice_of_cases

        net, cfg, info = self.segmenter
        case = Case("v", None, image[None], label, np.eye(4))  # type: ignore[arg-type]
        return float(np.nanmean(dice_of_cases(net, [case], tuple(info["window"]), cfg.num_classes)))

    def __call__(self, images: list[torch.Tensor]) -> dict[str, float]:
        """Mean over the volumes of each metric (``nn_ssim``: median, as the audit reports it)."""
        from evaluation.image_metrics import psnr, ssim3d

        fakes = [to_unit(x[0, 0]) for x in images]
        out = {"ssim": statistics.fmean(ssim3d(x, r)[0] for x, r in zip(fakes, self.reals)),
               "psnr": statistics.fmean(psnr(x, r) for x, r in zip(fakes, self.reals))}  # fmt: skip
        if self.train:
            out["nn_ssim"] = statistics.median(max(ssim3d(x, t)[0] for t in self.train) for x in fakes)
        if self.segmenter is not None:
            out["dice"] = statistics.fmean(self.dice(x, lab) for x, lab in zip(fakes, self.labels))
        return out


def over_seeds(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one seed) of a quality over seeds."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def measure(
    model: Any, segs: list, judge: Judge, args: argparse.Namespace, device: torch.device, sampler: str,
    steps: int | None, n_steps: int,
) -> dict[str, Any]:  # fmt: skip
    """One sampler row: every label map (one-hot ``segs``) sampled once per seed, timed, then judged per seed."""
    times, per_seed = [], []
    for seed in args.seeds:
        samples = []
        for i, seg in enumerate(segs):
            gen = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
            with timed_sampling(model, device) as seconds:
                samples.append(model.sample(seg, sampler, steps, args.guidance, generator=gen))
            times.append(seconds)
        per_seed.append(judge(samples))
    quality = {k: over_seeds([q[k] for q in per_seed]) for k in METRICS if k in per_seed[0]}
    spent = {key: summarise([t[part] for t in times]) for key, part in TIMES.items()}
    return {"steps": n_steps, **spent, "per_seed": per_seed, **quality}


def bench_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every ``--samplers`` row on every ``--ckpt`` it applies to, for every seed; the first stage's own
    reconstruction of the same volumes (what no sampler can beat) and the segmenter's Dice on the real ones; each
    row against the reference row (DDPM, else the most steps): speed-up and quality difference."""
    from dataset.contract import one_hot
    from diffusion.generation.pipeline import load_model
    from evaluation.segmenter import load_checkpoint

    if not args.ckpt:
        return {"status": "skipped", "reason": "no --ckpt given: pass short-trained diffusion checkpoints (e.g. "
                "experiment=mni152_diffusion_cpu, and model=diffusion_rflow_tiny for rectified flow)"}  # fmt: skip
    segmenter = load_checkpoint(args.segmenter, str(device)) if args.segmenter else None
    out: dict[str, Any] = {
        "status": "ok", "seeds": args.seeds, "checkpoints": {}, "results": [],
        "metric_convention": "images mapped from [-1, 1] to [0, 1]; data range 1; evaluation.image_metrics psnr and "
        "ssim3d (Gaussian window sigma 1.5, 11 taps or the largest odd size that fits); nn_ssim: median over volumes "
        "of the highest SSIM to a training volume; dice: the segmenter's mean foreground Dice",
    }  # fmt: skip
    for key, path in args.ckpt.items():
        model = load_model(path, device)
        hp, vq, samplers = model.hparams, model.first_stage, list(model.schedule.samplers)
        vols = real_volumes(model, "test", args.sample_volumes, args.data_root)
        train = real_volumes(model, "train", args.privacy_volumes, args.data_root) if args.privacy_volumes else []
        judge = Judge(vols, train, segmenter)
        segs = [one_hot(torch.as_tensor(v["label"])[None], model.label_nc).to(device) for v in vols]
        with torch.no_grad():
            recs = [vq.decode(vq.encode(torch.as_tensor(v["image"])[None].to(device)),
                              seg if vq.decoder_type == "spade" else None) for v, seg in zip(vols, segs)]  # fmt: skip
        guidance = float(hp.guidance if args.guidance is None else args.guidance)
        out["checkpoints"][key] = {
            "path": str(path), "objective": hp.objective, "prediction_type": hp.prediction_type,
            "num_train_timesteps": hp.num_train_timesteps, "samplers": samplers, "guidance": guidance,
            "volumes": [str(v["id"]) for v in vols], "first_stage_ceiling": judge(recs),
            "real_dice": statistics.fmean(map(judge.dice, judge.reals, judge.labels)) if segmenter else None,
        }  # fmt: skip
        model.sample(segs[0], sampler=samplers[-1], steps=2, guidance=args.guidance)  # warm-up: allocations, kernels
        for sampler, steps in [(name, steps) for only, name, steps in args.samplers if only in (None, key)]:
            n_steps = hp.num_train_timesteps if sampler == "ddpm" else steps or hp.sample_steps
            row = {"checkpoint": key, "sampler": sampler, "label": f"{sampler}-{n_steps}",
                   "passes_per_step": 1 if guidance in (0.0, 1.0) else 2}  # fmt: skip
            out["results"].append(row)
            run = partial(measure, model, segs, judge, args, device, sampler, steps, n_steps)
            if sampler not in samplers:
                row.update(status="not applicable", reason=f"checkpoint objective {hp.objective!r} samples with "
                           f"{samplers} only (rflow: a checkpoint trained with model=diffusion_rflow)")  # fmt: skip
            elif measured(row, f"sampling {key} {row['label']}", run, device):
                log.info("sampling %s %s: %.2f s/volume, SSIM %.3f", key, row["label"],
                         row["time_per_volume_s"]["median"], row["ssim"]["mean"])  # fmt: skip
        model = None
    ok = [r for r in out["results"] if r.get("status") == "ok"]
    ref = next((r for r in ok if r["sampler"] == "ddpm"), None) or max(ok, key=lambda r: r["steps"], default=None)
    out["reference"] = ref and f"{ref['checkpoint']} {ref['label']}"
    for r in ok if ref is not None else []:
        r["speedup"] = ref["time_per_volume_s"]["median"] / r["time_per_volume_s"]["median"]
        r["ssim_minus_ref"] = r["ssim"]["mean"] - ref["ssim"]["mean"]
        r["psnr_minus_ref"] = r["psnr"]["mean"] - ref["psnr"]["mean"]
    return out
