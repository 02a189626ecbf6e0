"""Training step time and peak memory of every model at every size, in a ``Trainer`` from ``config/trainer``."""

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
from scripts.bench.common import MODELS, error_reason, size_str, summary, training_volumes
from scripts.bench.machine import PeakMemory, free_memory, synchronize
from scripts.bench.profiling import start_profiler, write_profile

log = logging.getLogger("benchmark")


class StepTimer:
    """Lightning callback factory: wall time, loss and (optionally) a profile of every training batch."""

    def __init__(self, device: torch.device, loss_key: str, profile_batch: int | None) -> None:
        self.device, self.loss_key, self.profile_batch = device, loss_key, profile_batch
        self.times: list[float] = []
        self.losses: list[float | None] = []
        self.profile: torch.profiler.profile | None = None
        self._t0 = 0.0

    def callback(self) -> Any:
        """The ``pl.Callback`` that fills :attr:`times` and :attr:`losses`."""
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if batch_idx == timer.profile_batch:
                    timer.profile = start_profiler(timer.device)
                synchronize(timer.device)
                timer._t0 = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
                synchronize(timer.device)
                elapsed = time.perf_counter() - timer._t0
                if i == timer.profile_batch and timer.profile is not None:
                    timer.profile.__exit__(None, None, None)
                    return
                timer.times.append(elapsed)
                loss = trainer.callback_metrics.get(timer.loss_key)
                timer.losses.append(float(loss) if loss is not None else None)

        return _Callback()


def fit_steps(
    model: torch.nn.Module,
    stage: str,
    size: Sequence[int],
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: str = "32-true",
    profile: bool = False,
    label_files: Sequence[str] | None = None,
) -> StepTimer:
    """Train ``n`` (+1 profiled) batches of random volumes with a ``Trainer`` from ``config/trainer``.

    ``label_files``: real label maps instead of random ones (:func:`scripts.bench.common.training_volumes`).
    """
    import pytorch_lightning as pl

    timer = StepTimer(device, "train/rec_loss" if stage == "vqgan" else "train/loss", n if profile else None)
    data = training_volumes(n + int(profile), size, int(model.hparams.label_nc), seed, label_files)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=0)
    with tempfile.TemporaryDirectory(prefix="medlsdm-bench-") as root:
        trainer = build_trainer(device, precision, Path(root), [timer.callback()])
        pl.seed_everything(seed, verbose=False)
        trainer.fit(model, train_dataloaders=loader)
    if len(timer.times) != n:
        raise RuntimeError(f"expected {n} timed batches, got {len(timer.times)}")
    return timer


def train_steps(
    model: torch.nn.Module,
    stage: str,
    size: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    memory: PeakMemory,
    profile: bool = False,
) -> dict[str, Any]:
    """Warm-up + repeats (+1 profiled) training batches; times exclude the warm-up and the profiled one."""
    n = args.warmup + args.repeats
    memory.reset()
    t0 = time.perf_counter()
    timer = fit_steps(model, stage, size, n, args.batch_size, args.seed, device, precision, profile)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "status": "ok",
        "step_time_s": summary(timer.times[args.warmup :]),
        "first_step_s": round(timer.times[0], 4),
        "fit_wall_s": round(wall, 2),
        "memory": memory.result(),
        "first_loss": timer.losses[0],
    }
    if timer.profile is not None:
        out["_profile"] = timer.profile
    return out


def predicted_skip(prev: dict | None, voxels: int, n_steps: int, memory: PeakMemory, max_s: float) -> str | None:
    """Reason to skip a size, predicted linearly in voxels from the last measured (smaller) size."""
    if prev is None:
        return None
    scale = voxels / prev["voxels"]
    t_pred = prev["step_time_s"]["median"] * scale * n_steps
    peak_pred = prev["memory"]["baseline_mb"] + prev["memory"]["increase_mb"] * scale
    limit = memory.limit_mb()
    src = f"(linear in voxels from {prev['size']})"
    if peak_pred > limit:
        return f"predicted peak memory {peak_pred:.0f} MB > {limit:.0f} MB available {src}"
    if t_pred > max_s:
        return f"predicted {t_pred:.0f} s for {n_steps} steps > --max-seconds {max_s:.0f} {src}"
    return None


def bench_training(args: argparse.Namespace, device: torch.device, profile_dir: Path | None) -> dict[str, Any]:
    """Training step time and peak memory of every model at every size, then its fast paths at one size."""
    from scripts.bench.fastpaths import training_fast_paths

    memory = PeakMemory(device)
    results: list[dict[str, Any]] = []
    fast: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    n_steps = args.warmup + args.repeats
    for name in args.models:
        spec = MODELS[name]
        prev: dict | None = None
        measured: list[dict] = []
        for size in sorted(args.sizes, key=math.prod):
            row: dict[str, Any] = {
                "model": name,
                "stage": spec.stage,
                "config": spec.config,
                "size": size_str(size),
                "voxels": math.prod(size),
                "batch_size": args.batch_size,
                "precision": "32-true",
                "compile": False,
            }
            results.append(row)
            reason = predicted_skip(prev, row["voxels"], n_steps, memory, args.max_seconds)
            if reason:
                row.update(status="skipped", reason=reason)
                log.info("training %s %s: skipped: %s", name, row["size"], reason)
                continue
            try:
                model, changes = build_model(spec, size, seed=args.seed)
                row["latent"] = size_str(latent_shape(spec, model, size))
                row["config_changes"] = changes
                row["params_m"] = round(trainable_params(model, spec) / 1e6, 3)
                bad = validity_error(model, spec, size)
                if bad:
                    row.update(status="skipped", reason=bad)
                    log.info("training %s %s: skipped: %s", name, row["size"], bad)
                    continue
                want_profile = profile_dir is not None and not measured
                res = train_steps(model, spec.stage, size, args, device, "32-true", memory, want_profile)
            except Exception as err:  # noqa: BLE001 - recorded, the benchmark goes on with the next measurement
                row.update(status="error", reason=error_reason(err))
                log.warning("training %s %s failed: %s", name, row["size"], row["reason"])
                free_memory(device)
                continue
            prof = res.pop("_profile", None)
            if prof is not None and profile_dir is not None:
                profiles.append(write_profile(prof, device, profile_dir, f"train_{name}_{row['size']}"))
            row.update(res)
            log.info(
                "training %s %s: %.3f s/step, peak %.0f MB",
                name,
                row["size"],
                row["step_time_s"]["median"],
                row["memory"]["peak_mb"],
            )
            prev = row
            measured.append(row)
            del model
            free_memory(device)
        if measured:
            fast.extend(training_fast_paths(args, device, spec, name, measured[-1], memory))
    return {"results": results, "fast_paths": fast, "memory_kind": memory.kind, "_profiles": profiles}
