"""Per-class intensity of synthetic against real volumes: each class's voxels' median and quartiles, pooled.

    python -m evaluation.class_intensity --real REAL_DIR --fake FAKE_DIR --labels LABEL_DIR \
        [--class-names background spleen ...] --out report/class_intensity.json

Each synthetic file pairs with its real image and label map by name (:mod:`evaluation.pairing`: ``<id>`` with
``<id>`` or ``<id>_s<k>``). For every class, the voxels under that class in the label map are pooled over all
cases: the real image's voxels once per case, the synthetic voxels of every sample. The report gives, per class,
the voxel count and the real and synthetic median and quartiles in the files' own units, and the difference of
the medians (synthetic - real). For CT generated from a ``ct_window`` dataset both are in HU, so "liver: real 52,
synthetic 61" reads directly as a tissue contrast check. Both folders must be in the same units: where both record
a range (``evaluation.intensity.recorded_range``) the ranges must agree.

For a model trained with a label table (sparse ids such as TotalSegmentator's) the label maps hold the user's ids:
the table recorded beside the folders (``generation.json`` of ``generate.py`` and of its ``--export-real``) reads
them into classes and names the rows, so ``--class-names`` may be left out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from dataset import DataError
from dataset.cli import ArgumentParser, check_unique, run_cli
from dataset.files import check_output_files, read_run_record
from dataset.label_table import LabelTable, load_class_ids, recorded_label_table
from dataset.nifti import load_image
from evaluation.cli_common import HelpFormatter
from evaluation.intensity import recorded_range
from evaluation.nifti_io import list_nifti
from evaluation.pairing import pair_folders
from evaluation.report import header, report_paths, write_report

log = logging.getLogger("class_intensity")
QUANTILES = (25.0, 50.0, 75.0)


def class_intensity(
    real_dir: Path, fake_dir: Path, label_dir: Path, class_names: list[str], table: LabelTable | None = None
) -> dict[str, dict[str, float | int | None]]:
    """Per-class pooled quartiles of real and synthetic voxels (module docstring).

    Args:
        real_dir, fake_dir, label_dir: folders of ``<id>`` real images, ``<id>[_s<k>]`` synthetic volumes and
            ``<id>`` label maps; every volume of a case on one (D, H, W) grid.
        class_names: names of classes 0..K-1 (label values must lie below K).
        table: the label table the maps' values are source ids of; None: they are class ids.

    Returns:
        class name -> ``{"voxels", "real_p25", "real_median", "real_p75", "fake_p25", "fake_median", "fake_p75",
        "median_difference"}``, for the classes that occur (voxels: in the real label maps, once per case).

    Raises:
        DataError: unpaired files, a missing label map, grids that differ, label values out of range (or not in
            the table).
    """
    pairs = pair_folders(real_dir, fake_dir)
    labels = list_nifti(label_dir)
    k = len(class_names)
    real_voxels: list[list[np.ndarray]] = [[] for _ in range(k)]
    fake_voxels: list[list[np.ndarray]] = [[] for _ in range(k)]
    seen: set[str] = set()
    for pair in pairs:
        if pair.id not in labels:
            raise DataError(f"{label_dir}: no label map {pair.id}.nii.gz for {pair.synthetic.name}")
        label, _ = load_class_ids(labels[pair.id], k, table)
        fake, _ = load_image(pair.synthetic)
        if fake.shape != label.shape:
            raise DataError(f"{pair.synthetic}: shape {fake.shape} differs from its label map's {label.shape}")
        new_case = pair.id not in seen
        if new_case:
            real, _ = load_image(pair.reference)
            if real.shape != label.shape:
                raise DataError(f"{pair.reference}: shape {real.shape} differs from its label map's {label.shape}")
            seen.add(pair.id)
        for c in np.unique(label):
            mask = label == c
            fake_voxels[c].append(fake[mask])
            if new_case:
                real_voxels[c].append(real[mask])
    out: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(class_names):
        if not real_voxels[c]:
            continue
        real_q = np.percentile(np.concatenate(real_voxels[c]), QUANTILES)
        fake_q = np.percentile(np.concatenate(fake_voxels[c]), QUANTILES)
        out[name] = {
            "voxels": int(sum(v.size for v in real_voxels[c])),
            "real_p25": float(real_q[0]),
            "real_median": float(real_q[1]),
            "real_p75": float(real_q[2]),
            "fake_p25": float(fake_q[0]),
            "fake_median": float(fake_q[1]),
            "fake_p75": float(fake_q[2]),
            "median_difference": float(fake_q[1] - real_q[1]),
        }
    return out


def markdown(table: dict[str, dict[str, float | int | None]], units: str) -> str:
    """The report's Markdown table, one row per class."""
    lines = [
        f"## Intensity per class ({units}; voxels pooled over the test cases)",
        "",
        "| class | voxels | real median [p25, p75] | synthetic median [p25, p75] | synthetic - real |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        real = f"{row['real_median']:.3g} [{row['real_p25']:.3g}, {row['real_p75']:.3g}]"
        fake = f"{row['fake_median']:.3g} [{row['fake_p25']:.3g}, {row['fake_p75']:.3g}]"
        lines.append(f"| {name} | {row['voxels']} | {real} | {fake} | {row['median_difference']:+.3g} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="folder of real images <id>.nii[.gz]")
    p.add_argument("--fake", type=Path, required=True, help="folder of synthetic volumes <id>[_s<k>].nii[.gz]")
    p.add_argument("--labels", type=Path, required=True, help="folder of label maps <id>.nii[.gz]")
    p.add_argument("--class-names", nargs="+", default=None, help="names of classes 0..K-1 (default: the label "
                   "table recorded beside the folders)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="report JSON (its Markdown twin beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report of this tool")
    p.add_argument("--log-level", default="info", help="logging level")
    return p


def command(args: argparse.Namespace, argv: list[str]) -> None:
    for folder in (args.real, args.fake, args.labels):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder")
    json_path, md_path = report_paths(args.out)
    check_output_files([json_path, md_path], args.overwrite, ours=lambda _p: read_run_record(json_path) is not None)
    ranges = {name: recorded_range(folder) for name, folder in (("--real", args.real), ("--fake", args.fake))}
    known = {name: r[:2] for name, r in ranges.items() if r is not None}
    if len(known) == 2 and known["--real"] != known["--fake"]:
        raise DataError(f"--real and --fake are recorded in different ranges ({known}); compare like with like")
    units = "recorded range " + str(list(known.get("--real") or known.get("--fake") or ("?", "?")))
    label_table = recorded_label_table(args.fake, args.real, args.labels)  # maps in the user's ids, if any
    names = args.class_names or (list(label_table.class_names) if label_table is not None else None)
    if not names:
        raise DataError(f"--class-names is needed: no label table is recorded beside {args.fake} or {args.real}")
    names = check_unique(names, "--class-names")
    if label_table is not None and label_table.label_nc != len(names):
        raise DataError(f"--class-names gives {len(names)} classes, the recorded label table {label_table.label_nc}")
    table = class_intensity(args.real, args.fake, args.labels, names, label_table)
    report = header("evaluation.class_intensity", argv) | {"units": units, "classes": table}
    if label_table is not None:
        report["label_table"] = label_table.to_plain()
    write_report(args.out, report, markdown(table, units))
    log.info("wrote %s and %s", json_path, md_path)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
