"""Step time and peak memory of stage 1 and stage 2 on your own data: raw label ids vs the compacted label table.

    python -m scripts.bench.vocabulary --config-dir my_configs --dataset ts --out runs/bench/vocabulary.json

``--dataset`` names a dataset config in ``--config-dir`` that has a ``label_table`` (what
``scripts/inspect_dataset.py --out`` writes). Two variants of it are trained, alternating in this process, for
``--rounds`` rounds, each a fresh model on the dataset's real training volumes (``--warmup`` untimed steps, then
``--steps`` timed ones, batch size 1, the GAN terms on from the first step as in ``scripts/benchmark.py``):

- ``table``: the config as it is, label values compacted to ``label_nc`` classes;
- ``raw``: no table, ``label_nc`` = the largest table value + 1 (every id a one-hot channel, used or not).

Stage 1 is the config's ``experiment=<dataset config's stage-1 experiment>`` model (default the CPU experiments of
``dataset=nifti_pairs``); stage 2 runs on an untrained first stage of the same variant (the cost of a step does not
depend on its weights). Peak memory is the process's peak RSS (CPU) or the CUDA allocator peak, reset before each
measurement. The JSON report and a Markdown table beside it (``.md``) are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from dataset import DataError
from dataset.cli import run_cli
from dataset.files import atomic_write_json, atomic_write_text, check_name, check_output_files
from evaluation.cli_common import HelpFormatter
from scripts.bench.machine import PeakMemory, machine_info
from scripts.bench.training import train_steps

log = logging.getLogger("benchmark.vocabulary")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
VARIANTS = ("table", "raw")


class Cycle(torch.utils.data.Dataset):
    """``n`` samples cycling through a dataset's samples (loaded once: the timed steps read no files)."""

    def __init__(self, dataset: torch.utils.data.Dataset, n: int) -> None:
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i % len(self.samples)]


def compose(primary: str, config_dir: Path, overrides: list[str]) -> Any:
    """``config/<primary>.yaml`` with the user's config folder on the search path (as ``--config-dir`` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(primary, overrides=[f"hydra.searchpath=[file://{config_dir.resolve()}]", *overrides])


def variant_overrides(variant: str, raw_nc: int) -> list[str]:
    """Hydra overrides of one variant: nothing for ``table``; no table and ``raw_nc`` classes for ``raw``."""
    if variant == "table":
        return []
    names = ",".join(["background", *[f"id_{k}" for k in range(1, raw_nc)]])
    return ["dataset.label_table=null", f"dataset.label_nc={raw_nc}", f"dataset.class_names=[{names}]"]


def raw_class_count(config_dir: Path, dataset: str) -> tuple[int, int]:
    """(classes of the table, largest table value + 1) of the dataset config."""
    from dataset.label_table import resolve_label_table

    cfg = compose("vqgan", config_dir, [f"dataset={dataset}"])
    table = resolve_label_table(cfg.dataset.get("label_table"))
    if table is None:
        raise DataError(
            f"dataset={dataset}: its config has no label_table (scripts/inspect_dataset.py --out writes one)"
        )
    return table.label_nc, max(table.remap) + 1


def measure(
    stage: str, variant: str, args: argparse.Namespace, raw_nc: int, device: torch.device, memory: PeakMemory
) -> dict[str, Any]:
    """One fresh model of ``stage`` for ``variant``: warm-up + timed steps on the real training volumes."""
    import hydra

    from diffusion.first_stage import architecture_hparams

    common = [f"dataset={args.dataset}", *variant_overrides(variant, raw_nc)]
    vq_cfg = compose("vqgan", args.config_dir, [f"experiment={args.stage1_experiment}", *common])
    datamodule = hydra.utils.instantiate(vq_cfg.dataset.datamodule, _convert_="all")
    datamodule.setup("fit")
    n = args.warmup + args.steps
    data = Cycle(datamodule.train_dataloader().dataset, n)
    torch.manual_seed(args.seed)
    vq = hydra.utils.instantiate(vq_cfg.model, _convert_="all", discriminator_iter_start=0)
    model = vq
    if stage == "diffusion":
        overrides = [f"experiment={args.stage2_experiment}", *common, "model.first_stage_ckpt=null"]
        cfg = compose("diffusion", args.config_dir, overrides)
        model = hydra.utils.instantiate(
            cfg.model, _convert_="all", first_stage_hparams=architecture_hparams(vq), latent_stats_batches=1
        )
    size = list(data.samples[0]["image"].shape[1:])
    steps = argparse.Namespace(warmup=args.warmup, repeats=args.steps, seed=args.seed, batch_size=1, labels=None)
    res = train_steps(model, stage, size, steps, device, "32-true", memory, data=data)
    return {"step_s": res["step_times_s"], "memory": res["memory"], "label_nc": int(model.hparams.label_nc)}


def command(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Alternate the two variants for both stages; write the report."""
    check_name(args.dataset, "--dataset")
    md = args.out.with_suffix(".md")
    check_output_files([args.out, md], args.overwrite)
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        raise ValueError("--steps and --rounds must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    table_nc, raw_nc = raw_class_count(args.config_dir, args.dataset)
    memory = PeakMemory(device)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for stage in ("vqgan", "diffusion"):
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:  # alternated: neither always goes first
                runs[variant].append(measure(stage, variant, args, raw_nc, device, memory))
                log.info("%s %s round %d: median %.3f s/step", stage, variant, r,
                         statistics.median(runs[variant][-1]["step_s"]))  # fmt: skip
        results[stage] = {
            v: {
                "label_nc": rs[0]["label_nc"],
                "step_time_s": statistics.median([t for x in rs for t in x["step_s"]]),
                "step_times_s": [t for x in rs for t in x["step_s"]],
                "peak_memory_mb": max(x["memory"]["peak_mb"] for x in rs),
                "memory_increase_mb": max(x["memory"]["increase_mb"] for x in rs),
            }
            for v, rs in runs.items()
        }
    report = {
        "command": ["python", "-m", "scripts.bench.vocabulary", *argv],
        "machine": machine_info(device),
        "memory_kind": memory.kind,
        "dataset": args.dataset,
        "classes": {"table": table_nc, "raw": raw_nc},
        "settings": {"warmup": args.warmup, "steps": args.steps, "rounds": args.rounds, "batch_size": 1},
        "results": results,
    }
    atomic_write_json(args.out, report, overwrite=args.overwrite)
    atomic_write_text(md, markdown(report), overwrite=args.overwrite)
    log.info("wrote %s and %s", args.out, md)
    return report


def markdown(report: dict[str, Any]) -> str:
    """One row per stage: step time and peak memory of both variants, and their ratios."""
    c = report["classes"]
    lines = [
        f"| stage | raw ids ({c['raw']} classes) s/step | table ({c['table']} classes) s/step | speed-up | "
        "raw peak MB | table peak MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage, res in report["results"].items():
        raw, tab = res["raw"], res["table"]
        speedup = raw["step_time_s"] / tab["step_time_s"]
        lines.append(
            f"| {stage} | {raw['step_time_s']:.2f} | {tab['step_time_s']:.2f} | {speedup:.2f}x | "
            f"{raw['peak_memory_mb']:.0f} | {tab['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config-dir", type=Path, required=True, help="your config folder (holds dataset/<name>.yaml)")
    p.add_argument("--dataset", required=True, help="dataset config name with a label_table")
    p.add_argument("--out", type=Path, required=True, help="JSON report (Markdown beside it)")
    p.add_argument("--stage1-experiment", default="nifti_pairs_vqgan_cpu", help="stage-1 experiment config")
    p.add_argument("--stage2-experiment", default="nifti_pairs_diffusion_cpu", help="stage-2 experiment config")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="alternation rounds (each variant once per round)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--log-level", default="info", help="logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
