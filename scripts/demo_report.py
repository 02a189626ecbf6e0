"""The demo's report writer: ``<out>/report/`` with its README (the metrics tables, the commands), the montages,
GIFs, summary figure and training curves of a finished ``scripts/demo.py`` run (its stage driver).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from dataset.files import atomic_write_json, atomic_write_text

log = logging.getLogger("demo")


def figure_window(dataset_cfg: DictConfig) -> tuple[float, float]:
    """Grey-level window of the demo's figures: the config's ``display_window``, else that of the exported units."""
    from dataset.visualization import display_window
    from diffusion.generation.pipeline import output_units

    if dataset_cfg.get("display_window") is not None:
        lo, hi = (float(v) for v in dataset_cfg.display_window)
        return lo, hi
    intensity = dataset_cfg.get("intensity")
    units = "data" if output_units(intensity)["units"] != "model" else "model"
    return display_window(intensity, units)


def montages(
    out: Path,
    ids: list[str],
    label_nc: int,
    class_names: list[str] | None = None,
    window: tuple[float, float] = (-1.0, 1.0),
) -> list[str]:
    """Per-subject montages and GIFs, one summary figure and the training curves; returns the report's lines.

    ``window``: the grey-level window of every image (:func:`figure_window`).
    """
    import torch

    from dataset.nifti import load_image, load_label
    from dataset.visualization import Subject, save_gif, save_montage, save_summary_figure
    from train.curves import write_curves

    report = out / "report"
    subjects = []
    for vid in ids:
        real, affine = load_image(out / "data" / "test" / "images" / f"{vid}.nii.gz")
        label, _ = load_label(out / "data" / "test" / "labels" / f"{vid}.nii.gz")
        fake, _ = load_image(out / "synthetic" / f"{vid}_s0.nii.gz")
        rows = [
            ("real", torch.from_numpy(real)),
            ("label", torch.from_numpy(label)),
            ("synthetic", torch.from_numpy(fake)),
        ]
        save_montage(report / f"{vid}_montage.png", rows, num_slices=8, label_nc=label_nc, affine=affine,
                     class_names=class_names, window=window)  # fmt: skip
        for name, vol in (("real", real), ("synthetic", fake)):
            save_gif(report / f"{vid}_{name}.gif", torch.from_numpy(vol)[None], label=torch.from_numpy(label)[None],
                     affine=affine, window=window)  # fmt: skip
        subjects.append(Subject(vid, real, label, fake, affine))
    save_summary_figure(report / "summary.png", subjects, num_slices=6, label_nc=label_nc, class_names=class_names,
                        window=window)  # fmt: skip
    lines = ["## Summary (every test subject: real | label | synthetic)", "", "![summary](summary.png)", "",
             "## Training curves", ""]  # fmt: skip
    for stage in ("vqgan", "diffusion"):
        csv_log = out / stage / "csv" / "metrics.csv"
        if csv_log.is_file():
            pngs = write_curves(csv_log, report / stage, title=stage)
            lines += [f"![{stage} {png.stem}]({stage}/{png.name})" for png in pngs]
    return lines + [""]


def write_report(
    out: Path,
    dataset: str,
    t0: float,
    ids: list[str],
    train_ids: list[str],
    class_names: list[str],
    window: tuple[float, float],
    extra_tables: list[str],
    commands: list[str],
    pair_lines: list[str],
) -> None:
    """Figures, then ``out/report/README.md`` and ``run.json`` (the wall time counted from ``t0``, a ``time.time()``).

    Args:
        out: the demo's output folder; its stages wrote the ``report/<name>.md`` tables read here.
        dataset: the embedded dataset's name (the title).
        ids, train_ids: the exported test and training subjects.
        class_names, window: the figures' legend and grey-level window (:func:`figure_window`).
        extra_tables: Markdown after the evaluation tables (the edit and labels stages').
        commands: every stage's command line, in order.
        pair_lines: Markdown lines of the labels stage's (label | image) montages.
    """
    report = out / "report"
    figure_lines = montages(out, ids, label_nc=len(class_names), class_names=list(class_names), window=window)
    tables = [(report / f"{name}.md").read_text() for name in ("metrics", "class_intensity", "dice", "augment")]
    tables += extra_tables
    elapsed = time.time() - t0
    lines = [
        f"# Med-LSDM demo report (embedded {dataset} dataset, CPU)",
        "",
        f"Total wall time: {elapsed / 60:.1f} min. Test subjects: {len(ids)}, training subjects: {len(train_ids)}.",
        "",
        *tables,
        "",
        *figure_lines,
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
        "## Montages (rows: real | label | synthetic)",
        "",
    ]
    lines += [f"![{vid}]({vid}_montage.png)" for vid in ids]
    lines += pair_lines
    atomic_write_text(report / "README.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "run.json", {"seconds": elapsed, "commands": commands, "ids": ids})
    log.info("done in %.1f min: report in %s", elapsed / 60, report)
