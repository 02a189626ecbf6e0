"""Training step time and peak memory of every model at every size (random blocky maps or a dataset's real volumes
under one or two class tables), in a ``Trainer`` from ``config/trainer``; then the fast paths (the Trainer's mixed
precision, the diffusion model's ``compile``) against fp32, outputs compared within the benchmark's tolerances."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from evaluation.report import summarise
from scripts.bench import build, common
from scripts.bench.common import MODELS, NO_COMPILE, OUTPUT_RTOL, ModelSpec, PeakMemory, log, measured

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def train_steps(
    model: torch.nn.Module, data: torch.utils.data.Dataset, device: torch.device, precision: str, memory: PeakMemory,
    warmup: int = 0, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Fit ``model`` on ``data`` (batches of one) in a ``Trainer`` from ``config/trainer``: the timed steps' wall
    times (CUDA synchronised, after ``warmup`` untimed ones), the first step's and the peak memory."""
    import pytorch_lightning as pl

    times, t0 = [], [0.0]

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, *_: Any) -> None:
            common.synchronize(device)
            t0[0] = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            common.synchronize(device)
            times.append(time.perf_counter() - t0[0])

    memory.reset()
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as root:
        trainer = build.build_trainer(device, precision, Path(root), [StepTimer()])
        pl.seed_everything(seed, verbose=False)
        # a datamodule: the diffusion models measure their latent statistics on its training loader
        trainer.fit(model, datamodule=pl.LightningDataModule.from_datasets(data, batch_size=1))
    steps = [round(t, 4) for t in times]
    return {"step_times_s": steps[warmup:], "first_step_s": steps[0], "memory": memory.result()}


class Setup:
    """What the rows of one run share: the data each class table trains on, and how a model is built."""

    def __init__(self, args: argparse.Namespace, device: torch.device, memory: PeakMemory) -> None:
        self.args, self.device, self.memory = args, device, memory
        self.data: dict[str | None, build.Data] = args.class_data
        self.samples = {t: build.dataset_samples(d) for t, d in self.data.items()} if args.dataset else {}

    def model(
        self,
        spec: ModelSpec,
        size: Sequence[int],
        table: str | None,
        compile: bool = False,
        variant: str | None = None,
    ) -> Any:
        """The model of ``spec`` (with ``--variants``' arguments of ``variant``) and its config changes, with seeded
        weights (a fast path and its fp32 baseline start from the same ones; so do the variants)."""
        torch.manual_seed(self.args.seeds[0])
        classes = {} if self.args.label_nc is None else {"label_nc": self.args.label_nc}
        data = self.data[table]
        if spec.stage == "vqgan":
            return build.build_vqgan(spec.config, data, **classes, **self.args.variants.get(variant, {}))
        return build.build_diffusion(spec.config, spec.first_stage, size, data, compile=compile, **classes)

    def steps(self, model: Any, spec: ModelSpec, size: Sequence[int], table: str | None, precision: str) -> dict:
        """Warm-up + repeats steps of ``model`` on this run's data, and the first batch (for the output check)."""
        a, nc, real = self.args, int(model.hparams.label_nc), self.samples.get(table, ())
        data = common.Volumes(a.warmup + a.repeats, size, nc, a.seeds[0], real)
        res = train_steps(model, data, self.device, precision, self.memory, a.warmup, a.seeds[0])
        return {**res, "batch": {k: v[None].to(self.device) for k, v in data[0].items() if k in ("image", "label")}}


def measure(setup: Setup, spec: ModelSpec, size: Sequence[int], row: dict[str, Any]) -> dict[str, Any]:
    """One more fp32 measurement of ``row`` (a fresh model): its step times pooled with the earlier rounds'."""
    model, changes = setup.model(spec, size, row["classes"], variant=row["variant"])
    row.update(config_changes=changes, label_nc=int(model.hparams.label_nc), **build.describe(model, spec, size))
    if (why := build.validity_error(model, spec, size)) is not None:
        return {"status": "skipped", "reason": why}
    res = setup.steps(model, spec, size, row["classes"], "32-true")
    del res["batch"]
    times = row.get("step_times_s", []) + res.pop("step_times_s")
    peak = max(row.get("memory", res["memory"]), res["memory"], key=lambda m: m["peak_mb"])
    return {**res, "memory": peak, "step_times_s": times, "step_time_s": summarise(times)}


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Step time and peak memory of every ``--models`` model at every size under every class table and ``--variants``
    entry (alternated over ``--rounds``, each a fresh model, steps pooled), then its fast paths at the largest size
    measured."""
    memory = PeakMemory(device)
    setup, results, fast = Setup(args, device, memory), [], []
    shapes = {tuple(samples[0]["image"].shape[1:]) for samples in setup.samples.values()}
    for name in args.models:
        spec, prev = MODELS[name], None
        for size in sorted(shapes or args.sizes, key=math.prod):
            rows = [{"model": name, "size": common.size_str(size), "classes": t, "variant": v,
                     "voxels": math.prod(size)} for t in setup.data for v in args.variants or [None]]  # fmt: skip
            results.extend(rows)
            n, reason = (args.warmup + args.repeats) * args.rounds, None
            if prev is not None:  # predicted from the last measured size, linear in voxels
                scale = math.prod(size) / prev["voxels"]
                reason = memory.over_budget(prev, prev["step_time_s"]["median"] * scale * n, scale, args.max_seconds)
            for r in range(args.rounds if reason is None else 0):
                for row in rows[:: 1 if r % 2 == 0 else -1]:  # alternated: neither table always goes first
                    if row.get("status") in (None, "ok"):
                        measured(row, f"training {name} {row['size']}", partial(measure, setup, spec, size, row),
                                 device)  # fmt: skip
            for row in rows:
                if reason is not None:
                    row.update(status="skipped", reason=reason)
                first_table = next(r for r in rows if r["variant"] == row["variant"])
                first_variant = next(r for r in rows if r["classes"] == row["classes"])
                if row["status"] == "ok" and len(setup.data) > 1 and first_table["status"] == "ok":
                    row["vs_first_table"] = row["step_time_s"]["median"] / first_table["step_time_s"]["median"]
                if row["status"] == "ok" and args.variants and first_variant["status"] == "ok":
                    row["vs_first_variant"] = {
                        "step": row["step_time_s"]["median"] / first_variant["step_time_s"]["median"],
                        "peak": row["memory"]["peak_mb"] / first_variant["memory"]["peak_mb"],
                    }
                if row["status"] == "ok":
                    log.info("training %s %s %s %s: %.3f s/step, peak %.0f MB", name, row["size"],
                             row["classes"] or "", row["variant"] or "", row["step_time_s"]["median"],
                             row["memory"]["peak_mb"])  # fmt: skip
                    prev = row
        if prev is not None:
            fast.extend(training_fast_paths(args, device, spec, prev, setup))
    return {"status": "ok", "results": results, "fast_paths": fast, "memory_kind": memory.kind}


def forward_outputs(model: torch.nn.Module, stage: str, batch: dict[str, torch.Tensor], eager: bool = False) -> list:
    """The network outputs a fast path must reproduce, on a fixed batch (``image`` (B, 1, D, H, W) in [-1, 1],
    ``label`` (B, 1, D, H, W) int64). VQ-GAN: the encoder's continuous latent and the decoder's image from it (not
    the nearest code: a rounding change can flip a near tie, no numerical error). Diffusion: the denoiser's output
    for a fixed noisy latent, timestep and map; ``eager`` calls ``forward``, bypassing a ``compile``d ``__call__``."""
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


def measure_fast(setup: Setup, spec: ModelSpec, base: dict, precision: str, compile: bool) -> dict[str, Any]:
    """One fast path's steps and its outputs' relative error against fp32 / eager on the same weights and input."""
    size = common.parse_size(base["size"])
    model = setup.model(spec, size, base["classes"], compile)[0]
    res = setup.steps(model, spec, size, base["classes"], precision)
    model, batch = model.to(setup.device).train(), res.pop("batch")  # train mode as in the fit: no recompile
    with torch.no_grad():
        ref = forward_outputs(model, spec.stage, batch, eager=True)
        with torch.autocast(setup.device.type, AUTOCAST_DTYPES.get(precision, torch.bfloat16), enabled=not compile):
            got = forward_outputs(model, spec.stage, batch)
    err, tol = max(map(common.relative_error, ref, got)), OUTPUT_RTOL["compile" if compile else precision]
    step = summarise(res.pop("step_times_s"))
    return {**res, "step_time_s": step, "speedup": base["step_time_s"]["median"] / step["median"],
            "output_rel_error": err, "tolerance": tol, "equal_within_tolerance": err <= tol}  # fmt: skip


def training_fast_paths(
    args: argparse.Namespace, device: torch.device, spec: ModelSpec, base: dict, setup: Setup
) -> list:
    """Mixed precision and ``compile`` against the fp32 row ``base`` (same size, seed, first batch, class table):
    step time, memory and the outputs' relative error against fp32 / eager."""
    variants = [("bf16-mixed", False)] + [("16-mixed", False)] * (device.type == "cuda") + [("32-true", True)]
    out = []
    for precision, compile in variants:
        option = "model.compile=true" if compile else f"trainer.precision={precision}"
        row: dict[str, Any] = {"model": base["model"], "size": base["size"], "classes": base["classes"],
                               "precision": precision, "compile": compile, "option": option,
                               "baseline_step_s": base["step_time_s"]["median"]}  # fmt: skip
        out.append(row)
        t_pred = base["step_time_s"]["median"] * (args.warmup + args.repeats)
        if compile and spec.stage != "diffusion":
            row.update(status="not applicable", reason="the VQ-GAN has no compile option (diffusion model only)")
        elif compile and not args.compile:
            row.update(status="skipped", reason=NO_COMPILE)
        elif t_pred > args.max_seconds:
            row.update(status="skipped", reason=f"predicted {t_pred:.0f} s (the fp32 steps) > --max-seconds")
        elif precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            row.update(status="skipped", reason="this GPU has no bf16")
        elif measured(row, f"fast path {option}", partial(measure_fast, setup, spec, base, precision, compile),
                      device):  # fmt: skip
            log.info("fast path %s %s: %.3f s/step (x%.2f vs fp32), output rel. error %.1e", base["model"], option,
                     row["step_time_s"]["median"], row["speedup"], row["output_rel_error"])  # fmt: skip
    return out
