"""Sampling time per denoising step with and without the step-invariant SPADE cache (issue 13, target 2).

The label features and every SPADE gamma/beta of the denoiser depend on the label map only; the cache computes them
once per volume. Both variants sample the same latent from the same noise in alternating turns, and the two latents
are compared (the cache must be bit-identical).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import time
from typing import Any

import torch

from scripts.bench.build import build_diffusion
from scripts.bench.common import MODELS, RandomVolumes, error_reason, not_available, random_label, ratio, size_str
from scripts.bench.common import summary as stats
from scripts.bench.machine import free_memory, synchronize

log = logging.getLogger("benchmark")
VARIANTS = {"no cache (before)": False, "cache (after)": True}


def sampling_api() -> tuple[Any, Any] | str:
    """``(resolve_sampler, sample_images)`` of ``diffusion.sampling`` if it has the ``cache`` switch, else why not."""
    try:
        from diffusion.sampling import resolve_sampler, sample_images
    except ImportError as err:
        return f"diffusion.sampling has no resolve_sampler/sample_images ({err})"
    if "cache" not in inspect.signature(sample_images).parameters:
        return "diffusion.sampling.sample_images has no cache switch"
    return resolve_sampler, sample_images


def untrained_model(config: str, size: tuple[int, ...], seed: int, device: torch.device) -> Any:
    """The diffusion model of ``config`` on an untrained first stage, its latent normaliser fitted, for ``size``."""
    spec = MODELS[config]
    torch.manual_seed(seed)
    model, _ = build_diffusion(spec.config, spec.first_stage or "vq_gan_3d_tiny", size)
    with torch.no_grad():
        x = RandomVolumes(1, size, model.label_nc, seed)[0]["image"][None]
        model.latent_norm.fit_std([model.first_stage.encode(x)])
    return model.eval().to(device)


def bench_ab_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per-step time of DDIM (``--ab-sample-steps`` N steps, and 1) on a ``--ab-size`` label map, cache off vs on."""
    api = sampling_api()
    if isinstance(api, str):
        return not_available(api)
    resolve_sampler, sample_images = api
    size = tuple(args.ab_size)
    out: dict[str, Any] = {
        "status": "ok",
        "model": f"{args.ab_diffusion} config, random weights",
        "size": size_str(size),
        "sampler": "ddim",
        "steps": args.ab_sample_steps,
        "rounds": args.ab_rounds,
        "timing": "amortised: the whole sampling loop (label encoding, cache fill, every step; no decoding) / "
        "steps; per step: (time of N steps - time of 1 step) / (N - 1), the steady-state step; medians over rounds",
    }
    try:
        model = untrained_model(args.ab_diffusion, size, args.seed, device)
        sampler = "ddim" if "ddim" in model.schedule.samplers else "rflow"
        out["sampler"] = sampler
        settings = resolve_sampler(model, sampler, args.ab_sample_steps)
        labels = torch.as_tensor(random_label(size, model.label_nc, args.seed))[None].to(device)
        out["latent"] = size_str(
            [model.first_stage.embedding_dim, *(s // f for s, f in zip(size, model.latent_factor))]
        )
        out["guidance"] = settings.guidance

        one = resolve_sampler(model, sampler, 1)

        def run(cache: bool, n_steps: Any = settings) -> tuple[float, torch.Tensor]:
            gen = torch.Generator(device=device).manual_seed(args.seed)
            synchronize(device)
            t0 = time.perf_counter()
            z = sample_images(model, labels, [gen], n_steps, train_window=size, cache=cache, return_latents=True)
            synchronize(device)
            return time.perf_counter() - t0, z

        run(True)  # warm-up: allocations, kernels
        amortised: dict[str, list[float]] = {name: [] for name in VARIANTS}
        marginal: dict[str, list[float]] = {name: [] for name in VARIANTS}
        latents: dict[str, torch.Tensor] = {}
        names = list(VARIANTS)
        n = args.ab_sample_steps
        for r in range(args.ab_rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                t, z = run(VARIANTS[name])
                amortised[name].append(t / n)
                if n > 1:
                    marginal[name].append((t - run(VARIANTS[name], one)[0]) / (n - 1))
                latents.setdefault(name, z)
    except Exception as err:  # noqa: BLE001 - recorded
        log.exception("before/after sampling failed")
        return {**out, "status": "error", "reason": error_reason(err)}
    finally:
        free_memory(device)
    before, after = (latents[n] for n in names)
    out["amortised_step_time_s"] = {name: stats(t) for name, t in amortised.items()}
    out["amortised_ratio"] = ratio(*(out["amortised_step_time_s"][k]["median"] for k in names[::-1]))
    if n > 1:
        out["step_time_s"] = {name: stats(t) for name, t in marginal.items()}
        out["ratio"] = ratio(*(out["step_time_s"][k]["median"] for k in names[::-1]))
    out["bit_identical"] = bool(torch.equal(before, after))
    out["max_abs_diff"] = float((before - after).abs().max())
    log.info("before/after sampling: per step %s, ratio %s", out.get("step_time_s"), out.get("ratio"))
    return out
