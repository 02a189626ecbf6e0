"""Training step time and peak memory of every model at every size, in a ``Trainer`` from ``config/trainer``; then
the fast paths (the Trainer's mixed precision, the diffusion model's ``compile``) against fp32, with the network
outputs compared within the benchmark's tolerances."""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.bench.build import build_model, build_trainer, latent_shape, trainable_params, validity_error
from scripts.bench.common import (
    MODELS,
    OUTPUT_RTOL,
    ModelSpec,
    error_reason,
    parse_size,
    relative_error,
    size_str,
    summary,
    training_volumes,
)
from scripts.bench.machine import PeakMemory, free_memory, synchronize

log = logging.getLogger("benchmark")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def classes(args: argparse.Namespace) -> dict[str, int]:
    """``label_nc`` for the model builders when ``--label-nc`` is given (else the configs' own)."""
    return {} if args.label_nc is None else {"label_nc": args.label_nc}


def train_steps(
    model: torch.nn.Module,
    stage: str,
    size: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    memory: PeakMemory,
    data: torch.utils.data.Dataset | None = None,
) -> dict[str, Any]:
    """Warm-up + repeats batches of random volumes in a ``Trainer`` from ``config/trainer``: the median wall time of
    a step (CUDA synchronised) after the warm-up, the peak memory, and the first batch's loss.

    ``data``: samples to train on instead (at least ``(warmup + repeats) * batch_size``), e.g. a dataset's real
    volumes (``scripts/bench/vocabulary.py``)."""
    import pytorch_lightning as pl

    times: list[float] = []
    losses: list[Any] = []
    t0 = [0.0]

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            synchronize(device)
            t0[0] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            synchronize(device)
            times.append(time.perf_counter() - t0[0])
            losses.append(trainer.callback_metrics.get("train/rec_loss" if stage == "vqgan" else "train/loss"))

    n = args.warmup + args.repeats
    if data is None:
        data = training_volumes(n, size, int(model.hparams.label_nc), args.seed, args.labels)
    memory.reset()
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as root:
        trainer = build_trainer(device, precision, Path(root), [StepTimer()])
        pl.seed_everything(args.seed, verbose=False)
        # a datamodule: the diffusion models measure their latent statistics on its training loader
        trainer.fit(model, datamodule=pl.LightningDataModule.from_datasets(data, batch_size=args.batch_size))
    if len(times) != n:
        raise RuntimeError(f"expected {n} timed batches, got {len(times)}")
    return {
        "status": "ok",
        "step_time_s": summary(times[args.warmup :]),
        "step_times_s": [round(t, 4) for t in times[args.warmup :]],  # pooled over runs by bench/vocabulary.py
        "first_step_s": round(times[0], 4),
        "memory": memory.result(),
        "first_loss": None if losses[0] is None else float(losses[0]),
    }


def predicted_skip(prev: dict | None, voxels: int, n_steps: int, memory: PeakMemory, max_s: float) -> str | None:
    """Reason to skip a size, predicted linearly in voxels from the last measured (smaller) size."""
    if prev is None:
        return None
    scale = voxels / prev["voxels"]
    t_pred = prev["step_time_s"]["median"] * scale * n_steps
    peak_pred = prev["memory"]["baseline_mb"] + prev["memory"]["increase_mb"] * scale
    src = f"(linear in voxels from {prev['size']})"
    if peak_pred > memory.limit_mb():
        return f"predicted peak memory {peak_pred:.0f} MB > {memory.limit_mb():.0f} MB available {src}"
    if t_pred > max_s:
        return f"predicted {t_pred:.0f} s for {n_steps} steps > --max-seconds {max_s:.0f} {src}"
    return None


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Step time and peak memory of every ``--models`` model at every ``--sizes`` size, then its fast paths at the
    largest size measured."""
    memory = PeakMemory(device)
    results: list[dict[str, Any]] = []
    fast: list[dict[str, Any]] = []
    for name in args.models:
        spec = MODELS[name]
        prev: dict | None = None
        for size in sorted(args.sizes, key=math.prod):
            row: dict[str, Any] = {
                "model": name,
                "stage": spec.stage,
                "config": spec.config,
                "size": size_str(size),
                "voxels": math.prod(size),
                "batch_size": args.batch_size,
            }
            results.append(row)
            reason = predicted_skip(prev, row["voxels"], args.warmup + args.repeats, memory, args.max_seconds)
            try:
                if reason is None:
                    model, changes = build_model(spec, size, seed=args.seed, **classes(args))
                    row.update(
                        latent=size_str(latent_shape(spec, model, size)),
                        config_changes=changes,
                        params_m=round(trainable_params(model, spec) / 1e6, 3),
                    )
                    reason = validity_error(model, spec, size)
                if reason is not None:
                    row.update(status="skipped", reason=reason)
                    log.info("training %s %s: skipped: %s", name, row["size"], reason)
                    continue
                row.update(train_steps(model, spec.stage, size, args, device, "32-true", memory))
            except Exception as err:  # noqa: BLE001 - recorded, the benchmark goes on with the next measurement
                row.update(status="error", reason=error_reason(err))
                log.warning("training %s %s failed: %s", name, row["size"], row["reason"])
                continue
            finally:
                model = None
                free_memory(device)
            log.info(
                "training %s %s: %.3f s/step, peak %.0f MB",
                name,
                row["size"],
                row["step_time_s"]["median"],
                row["memory"]["peak_mb"],
            )
            prev = row
        if prev is not None:
            fast.extend(training_fast_paths(args, device, spec, name, prev, memory))
    return {"status": "ok", "results": results, "fast_paths": fast, "memory_kind": memory.kind}


def forward_outputs(model: torch.nn.Module, stage: str, batch: dict[str, torch.Tensor], eager: bool = False) -> list:
    """The network outputs a fast path must reproduce, on a fixed input.

    VQ-GAN: the encoder's continuous latent and the decoder's image from it (the codebook's nearest-code choice is
    left out: a rounding change can flip a near tie, which is no numerical error). Diffusion: the denoiser's
    prediction for a fixed noisy latent, timestep and label map; ``eager`` calls ``forward`` directly, bypassing a
    ``compile``d ``__call__`` (same weights, no compilation).

    Args:
        batch: ``image`` (B, 1, D, H, W) in [-1, 1] and ``label`` (B, 1, D, H, W) int64.
    """
    from dataset.contract import one_hot

    x = batch["image"]
    seg = one_hot(batch["label"], int(model.hparams.label_nc)).to(x.dtype)
    if stage == "vqgan":
        z = model.pre_vq_conv(model.encoder(x))
        return [z, model._decode_codes(z, seg if model.decoder_type == "spade" else None)]
    g = torch.Generator(device=x.device).manual_seed(1)
    z0 = model.encode(x)
    noise = torch.randn(z0.shape, generator=g, device=x.device)
    t = torch.randint(0, model.schedule.num_train_timesteps, (z0.shape[0],), generator=g, device=x.device)
    net = model.denoiser.forward if eager else model.denoiser
    return [net(model.schedule.add_noise(z0, noise, t), t, seg)]


def output_check(
    model: torch.nn.Module,
    spec: ModelSpec,
    size: Sequence[int],
    device: torch.device,
    args: argparse.Namespace,
    precision: str,
    compile: bool,
) -> dict[str, Any]:
    """Relative error of the fast path's outputs against fp32 / eager on the same weights and input."""
    model = model.to(device).train()  # training mode, as in the fit: a compiled graph is reused, not recompiled
    data = training_volumes(1, size, int(model.hparams.label_nc), args.seed, args.labels)
    batch = {k: v[None].to(device) for k, v in data[0].items()}
    with torch.no_grad():
        ref = forward_outputs(model, spec.stage, batch, eager=True)
        if compile:
            out, tol = forward_outputs(model, spec.stage, batch), OUTPUT_RTOL["compile"]
        else:
            with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
                out, tol = forward_outputs(model, spec.stage, batch), OUTPUT_RTOL[precision]
    err = max(relative_error(a, b) for a, b in zip(ref, out))
    return {"output_rel_error": err, "tolerance": tol, "equal_within_tolerance": err <= tol}


def training_fast_paths(
    args: argparse.Namespace, device: torch.device, spec: ModelSpec, name: str, base: dict, memory: PeakMemory
) -> list[dict[str, Any]]:
    """Mixed precision and ``compile`` against the fp32 row ``base`` (same size, seed and first batch): step time,
    memory, the outputs' relative error against fp32 / eager and, for information, the first loss's difference."""
    size = parse_size(base["size"])
    variants = [("bf16-mixed", False)] + ([("16-mixed", False)] if device.type == "cuda" else []) + [("32-true", True)]
    out = []
    for precision, compile in variants:
        row: dict[str, Any] = {
            "model": name,
            "size": base["size"],
            "precision": precision,
            "compile": compile,
            "option": "model.compile=true" if compile else f"trainer.precision={precision}",
            "baseline_step_s": base["step_time_s"]["median"],
        }
        out.append(row)
        t_pred = base["step_time_s"]["median"] * (args.warmup + args.repeats)
        if compile and spec.stage != "diffusion":
            row.update(status="not applicable", reason="the VQ-GAN has no compile option (diffusion model only)")
        elif compile and not args.compile:
            row.update(status="skipped", reason=args.compile_skip_reason)
        elif t_pred > args.max_seconds:
            row.update(status="skipped", reason=f"predicted {t_pred:.0f} s (the fp32 steps) > --max-seconds")
        elif precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            row.update(status="skipped", reason="this GPU has no bf16")
        if "status" in row:
            continue
        try:
            model, _ = build_model(spec, size, compile=compile, seed=args.seed, **classes(args))
            row.update(train_steps(model, spec.stage, size, args, device, precision, memory))
            row.update(output_check(model, spec, size, device, args, precision, compile))
        except Exception as err:  # noqa: BLE001 - recorded
            row.update(status="error", reason=error_reason(err))
            log.warning("fast path %s %s failed: %s", name, row["option"], row["reason"])
            continue
        finally:
            model = None
            free_memory(device)
        row["speedup"] = base["step_time_s"]["median"] / row["step_time_s"]["median"]
        a, b = base.get("first_loss"), row.get("first_loss")
        if a is not None and b is not None:
            row["first_loss_rel_diff"] = abs(b - a) / max(abs(a), 1e-12)
        log.info(
            "fast path %s %s: %.3f s/step (x%.2f vs fp32), output rel. error %.1e",
            name,
            row["option"],
            row["step_time_s"]["median"],
            row["speedup"],
            row["output_rel_error"],
        )
    return out
