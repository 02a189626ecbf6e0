"""Steps vs quality of a teacher and its distilled students (issue 22) on a finished demo run's data.

    python -m scripts.bench.distill --demo runs/demo --model teacher=runs/demo/diffusion/checkpoints/last.ckpt \
        --model reflow=runs/distill_reflow/checkpoints/last.ckpt --steps teacher=1,2,4,8,16,30 \
        --steps reflow=1,2,4 --seeds 0 1 2 --out runs/distill_table

For every model, step count and seed: the demo's held-out label maps are generated through the generation pipeline
(:func:`diffusion.generation.pipeline.generate`, the one sampling path), timed per volume and split into denoising
(the sampler loop) and decoding (the VQ-GAN); then the demo's own evaluation tools score the folder:
``evaluation.compute_metrics`` (paired SSIM and PSNR against the real test volumes, the privacy audit's
nearest-neighbour SSIM against the training volumes) and ``evaluation.segmentation evaluate`` (Dice of the demo's
real-trained segmenter on the synthetic volumes). No metric is computed here. The table (mean ± std over seeds) goes
to ``<out>/table.md`` and everything to ``<out>/table.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("bench.distill")


def parse_named(items: list[str], what: str) -> dict[str, str]:
    """``name=value`` items to a dict (order kept); a malformed one is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"error: {what} must be NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="a finished scripts/demo.py output folder")
    p.add_argument("--model", action="append", required=True, help="NAME=CKPT (stage-2 checkpoints), repeatable")
    p.add_argument("--steps", action="append", required=True, help="NAME=1,2,4 sampler steps per model, repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True, help="output folder (generated volumes, reports, table)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.models = {k: Path(v) for k, v in parse_named(args.model, "--model").items()}
    steps = parse_named(args.steps, "--steps")
    try:
        args.step_lists = {k: [int(s) for s in v.split(",")] for k, v in steps.items()}
    except ValueError:
        p.exit(2, "error: --steps values must be comma-separated integers\n")
    for name in args.step_lists:
        if name not in args.models:
            p.exit(2, f"error: --steps {name}=... names no --model\n")
    for name, ckpt in args.models.items():
        if not ckpt.is_file():
            p.exit(2, f"error: --model {name}: {ckpt} not found\n")
    for sub in ("data/test/images", "data/test/labels", "data/train/images", "segmenter/real.pt"):
        if not (args.demo / sub).exists():
            p.exit(2, f"error: --demo {args.demo} is not a finished demo run (no {sub})\n")
    return args


class Stopwatch:
    """Accumulated wall-clock seconds of the calls it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


@contextmanager
def split_timing(model: Any) -> Iterator[tuple[Stopwatch, Stopwatch]]:
    """Time the sampler loop (``model.schedule.sample``) and the decoding (``model.first_stage.decode``, which every
    decoding path ends in) separately.

    Instance attributes shadow the methods for the duration, so the generation code runs unchanged.
    """
    denoise, decode = Stopwatch(), Stopwatch()
    model.schedule.sample = denoise.wrap(model.schedule.sample)
    model.first_stage.decode = decode.wrap(model.first_stage.decode)
    try:
        yield denoise, decode
    finally:
        del model.schedule.sample
        del model.first_stage.decode


def run_tool(cmd: list[str], log_path: Path) -> None:
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log_path}")


def evaluate_folder(demo: Path, fake: Path, class_names: list[str]) -> dict[str, float]:
    """The demo's evaluation tools on one generated folder: SSIM, PSNR, privacy nn-SSIM, Dice."""
    test, train = demo / "data" / "test", demo / "data" / "train"
    py = sys.executable
    run_tool([py, "-m", "evaluation.compute_metrics", "--real", str(test / "images"), "--fake", str(fake),
              "--labels", str(test / "labels"), "--train", str(train / "images"), "--metrics", "psnr,ssim,privacy",
              "--out", str(fake / "metrics.json"), "--no-progress", "--overwrite"], fake / "metrics.log")  # fmt: skip
    run_tool([py, "-m", "evaluation.segmentation", "evaluate", "--model", str(demo / "segmenter" / "real.pt"),
              "--labels", str(test / "labels"), "--real", str(test / "images"), "--fake", str(fake),
              "--class-names", *class_names, "--out", str(fake / "dice.json"), "--no-progress",
              "--overwrite"], fake / "dice.log")  # fmt: skip
    metrics = json.loads((fake / "metrics.json").read_text())
    dice = json.loads((fake / "dice.json").read_text())
    return {
        "ssim": float(metrics["metrics"]["ssim"]["mean"]),
        "psnr": float(metrics["metrics"]["psnr"]["mean"]),
        "nn_ssim": float(metrics["privacy"]["summary"]["nn_ssim"]["median"]),
        "dice_synthetic": float(dice["dice"]["synthetic"]["mean"]),
        "dice_real": float(dice["dice"]["real"]["mean"]),
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from diffusion.generation.pipeline import GenerationSettings, generate, load_label_volumes
    from diffusion.module import load_checkpoint
    from scripts.bench.machine import machine_info, versions

    device = torch.device(args.device)
    labels = sorted((args.demo / "data" / "test" / "labels").glob("*.nii.gz"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name, ckpt in args.models.items():
        model = load_checkpoint(ckpt, device)
        class_names = [str(c) for c in (model.hparams.data_info or {}).get("class_names") or []]
        volumes = load_label_volumes(labels, model.label_nc)
        for steps in args.step_lists.get(name, [model.hparams.sample_steps]):
            runs = []
            for seed in args.seeds:
                fake = args.out / "gen" / f"{name}_{steps}_s{seed}"
                settings = GenerationSettings(steps=steps, seed=seed)
                with split_timing(model) as (denoise, decode):
                    t0 = time.perf_counter()
                    generate(model, volumes, fake, settings, overwrite=True, progress=False)
                    total = time.perf_counter() - t0
                n = len(volumes)
                run = {"seed": seed, "seconds_per_volume": total / n, "denoise_s": denoise.seconds / n,
                       "decode_s": decode.seconds / n, **evaluate_folder(args.demo, fake, class_names)}  # fmt: skip
                log.info("%s %d steps seed %d: %s", name, steps, seed, run)
                runs.append(run)
            keys = [k for k in runs[0] if k != "seed"]
            rows.append({"model": name, "steps": steps, "guidance": float(model.hparams.guidance),
                         "runs": runs, **{k: mean_std([r[k] for r in runs]) for k in keys}})  # fmt: skip
    report = {"command": "python -m scripts.bench.distill " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(device), "versions": versions(), "seeds": args.seeds, "rows": rows}  # fmt: skip
    (args.out / "table.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "table.md").write_text(markdown(rows))
    log.info("table: %s", args.out / "table.md")
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """The steps-vs-quality table, mean ± std over seeds."""

    def f(row: dict[str, Any], key: str, digits: int) -> str:
        return f"{row[key]['mean']:.{digits}f} ± {row[key]['std']:.{digits}f}"

    lines = ["| model | steps | passes/step | SSIM | PSNR (dB) | Dice synthetic | privacy nn-SSIM | s/volume | "
             "denoise s | decode s |", "|---|---:|---:|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        passes = 1 if r["guidance"] in (0.0, 1.0) else 2
        lines.append(f"| {r['model']} | {r['steps']} | {passes} | {f(r, 'ssim', 3)} | {f(r, 'psnr', 2)} | "
                     f"{f(r, 'dice_synthetic', 3)} | {f(r, 'nn_ssim', 3)} | {f(r, 'seconds_per_volume', 3)} | "
                     f"{f(r, 'denoise_s', 3)} | {f(r, 'decode_s', 3)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
