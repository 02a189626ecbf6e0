"""Training fast paths: the Trainer's mixed precision and the diffusion model's ``compile``, each against fp32 with
the network outputs compared within the benchmark's tolerances."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

import torch

from scripts.bench.build import build_model
from scripts.bench.common import OUTPUT_RTOL, ModelSpec, RandomVolumes, error_reason, parse_size, relative_error
from scripts.bench.machine import PeakMemory, free_memory
from scripts.bench.training import train_steps

log = logging.getLogger("benchmark")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def forward_outputs(model: torch.nn.Module, stage: str, batch: dict[str, torch.Tensor], eager: bool = False) -> list:
    """The network outputs a fast path must reproduce, on a fixed input.

    VQ-GAN: the encoder's continuous latent and the decoder's image from that latent (the codebook's nearest-code
    choice is left out: a rounding change can flip a near tie, which is no numerical error). Diffusion: the
    denoiser's prediction for a fixed noisy latent, timestep and label map. ``eager`` calls ``forward`` directly,
    bypassing a ``compile``d ``__call__`` (same weights, no compilation).

    Args:
        batch: ``image`` (B, 1, D, H, W) in [-1, 1] and ``label`` (B, 1, D, H, W) int64.
    """
    from dataset.contract import one_hot

    x = batch["image"]
    seg = one_hot(batch["label"], int(model.hparams.label_nc)).to(x.dtype)
    if stage == "vqgan":
        z = model.pre_vq_conv(model.encoder(x))
        dec_seg = seg if model.decoder_type == "spade" else None
        return [z, model._decode_codes(z, dec_seg)]
    g = torch.Generator(device=x.device).manual_seed(1)
    z0 = model.encode(x)
    noise = torch.randn(z0.shape, generator=g, device=x.device)
    t = torch.randint(0, model.schedule.num_train_timesteps, (z0.shape[0],), generator=g, device=x.device)
    x_t = model.schedule.add_noise(z0, noise, t)
    net = model.denoiser.forward if eager else model.denoiser
    return [net(x_t, t, seg)]


def output_check(ref: list[torch.Tensor], out: list[torch.Tensor], tol: float) -> dict[str, Any]:
    """The largest relative error of ``out`` against ``ref`` and the verdict against ``tol``."""
    err = max(relative_error(a, b) for a, b in zip(ref, out))
    return {"output_rel_error": err, "tolerance": tol, "equal_within_tolerance": err <= tol}


def _batch(size: Sequence[int], label_nc: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[None].to(device) for k, v in RandomVolumes(1, size, label_nc, seed)[0].items()}


def precision_check(spec: ModelSpec, size: Sequence[int], device: torch.device, precision: str, seed: int) -> dict:
    """fp32 vs autocast outputs of a freshly built model (same weights, same input)."""
    model, _ = build_model(spec, size, seed=seed)
    model = model.to(device).train()
    batch = _batch(size, int(model.hparams.label_nc), seed, device)
    with torch.no_grad():
        ref = forward_outputs(model, spec.stage, batch)
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
            out = forward_outputs(model, spec.stage, batch)
    return output_check(ref, out, OUTPUT_RTOL[precision])


def compile_check(model: torch.nn.Module, size: Sequence[int], device: torch.device, seed: int) -> dict:
    """Compiled vs eager denoiser on the model that was just trained compiled (training mode and grad on, as in the
    fit, so the compiled graph is reused rather than recompiled)."""
    model = model.to(device).train()
    batch = _batch(size, int(model.hparams.label_nc), seed, device)
    return output_check(
        forward_outputs(model, "diffusion", batch, eager=True),
        forward_outputs(model, "diffusion", batch),
        OUTPUT_RTOL["compile"],
    )


def _skip_reason(
    args: argparse.Namespace, device: torch.device, spec: ModelSpec, base: dict, precision: str, compile: bool
) -> tuple[str, str] | None:
    if compile and spec.stage != "diffusion":
        return "not applicable", "the VQ-GAN has no compile option (diffusion model only)"
    if compile and not args.compile:
        return "skipped", args.compile_skip_reason
    t_pred = base["step_time_s"]["median"] * (args.warmup + args.repeats)
    if t_pred > args.max_seconds:
        return "skipped", f"predicted {t_pred:.0f} s (the fp32 steps) > --max-seconds"
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "skipped", "this GPU has no bf16"
    return None


def training_fast_paths(
    args: argparse.Namespace, device: torch.device, spec: ModelSpec, name: str, base: dict, memory: PeakMemory
) -> list[dict[str, Any]]:
    """Mixed precision and ``compile`` against the fp32 row ``base`` (same size, same seed, same first batch).

    Each row has the step time and memory, the relative error of the network outputs against fp32 / eager (the
    "equal within tolerance" verdict) and, for information, the relative difference of the first training loss.
    """
    size = parse_size(base["size"])
    variants: list[tuple[str, bool]] = [("bf16-mixed", False)]
    if device.type == "cuda":
        variants.append(("16-mixed", False))
    variants.append(("32-true", True))
    out = []
    for precision, compile in variants:
        label = "compile" if compile else precision
        row: dict[str, Any] = {
            "model": name,
            "size": base["size"],
            "precision": precision,
            "compile": compile,
            "option": "model.compile=true" if compile else f"trainer.precision={precision}",
            "baseline_step_s": base["step_time_s"]["median"],
        }
        out.append(row)
        skip = _skip_reason(args, device, spec, base, precision, compile)
        if skip is not None:
            row.update(status=skip[0], reason=skip[1])
            continue
        try:
            model, _ = build_model(spec, size, compile=compile, seed=args.seed)
            res = train_steps(model, spec.stage, size, args, device, precision, memory)
            res.update(
                compile_check(model, size, device, args.seed)
                if compile
                else precision_check(spec, size, device, precision, args.seed)
            )
        except Exception as err:  # noqa: BLE001 - recorded
            row.update(status="error", reason=error_reason(err))
            log.warning("fast path %s %s failed: %s", name, label, row["reason"])
            free_memory(device)
            continue
        row.update(res)
        row["speedup"] = round(base["step_time_s"]["median"] / res["step_time_s"]["median"], 3)
        a, b = base.get("first_loss"), res.get("first_loss")
        if a is not None and b is not None:
            row["first_loss_fp32"] = a
            row["first_loss_rel_diff"] = abs(b - a) / max(abs(a), 1e-12)
        log.info(
            "fast path %s %s: %.3f s/step (x%.2f vs fp32), output rel. error %.1e",
            name,
            label,
            res["step_time_s"]["median"],
            row["speedup"],
            row["output_rel_error"],
        )
        del model
        free_memory(device)
    return out
