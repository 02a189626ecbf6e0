"""Read a folder of image/label NIfTI pairs once and print a dataset config for it, ready to paste.

    python scripts/inspect_dataset.py DATA_ROOT --name mydata > my_configs/dataset/mydata.yaml
    python scripts/inspect_dataset.py DATA_ROOT --name mydata --out my_configs/dataset/mydata.yaml
    python scripts/inspect_dataset.py DATA_ROOT --name mydata --out my_configs/dataset/mydata.yaml \
        --names SUBJECT/segmentations      # class names from a TotalSegmentator-style one-file-per-class folder

``DATA_ROOT`` is in any layout ``dataset=nifti_pairs`` reads (``manifest.json``, ``<split>/images`` +
``<split>/labels``, or ``images`` + ``labels``). Every pair is loaded once with the project's NIfTI readers
(``dataset.nifti.load_pair``): image and label must share shape and affine, labels must be integers, images
finite; the first pair that does not is reported in one line (exit status 2) and nothing is written.

The output is a complete ``config/dataset/nifti_pairs.yaml``-style config whose header comments list, per file,
split, shape (D, H, W), voxel size (mm), orientation, intensity range and label values, and whose values are
suggestions derived from them:

- ``block_size``: the largest volume rounded up, per axis, to ``--multiple`` (what the models' downsampling needs;
  default 4 8 8 for the tiny CPU models, 4 32 32 for the paper's), so no volume is cropped (``--max-block`` caps
  it: larger volumes are then centre-cropped);
- ``voxel_size``: the common voxel size, or null with a warning when the files differ (they are not resampled);
- a label table (``dataset/label_tables`` format): the label values that occur in any file, compacted in
  increasing order to classes 0, 1, 2, ... (TotalSegmentator's 42 of ids 0-117 become 42 classes, not 118), named
  from ``--names`` (a JSON/YAML mapping id -> name, or a one-file-per-class folder such as TotalSegmentator's
  ``segmentations/liver.nii.gz``, ...: names from the file names, ids from the values under each mask) or
  ``class_<value>`` placeholders. With ``--out`` it is written beside the config as ``<name>_labels.yaml`` and the
  config names it (``label_table``); on standard output it is inlined. Merge classes by mapping several values to
  one class name there; ``label_nc`` and ``class_names`` are the table's;
- ``modality`` and ``intensity``: CT in Hounsfield units (air near -1000) -> ``ct_window`` [-1000, 1000] HU;
  already in [-1, 1] -> null; otherwise MR -> per-volume percentiles 0.5 / 99.5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import OmegaConf

from dataset import DataError
from dataset.cli import ArgumentParser, positive_int, run_cli
from dataset.files import atomic_write_text, check_name, check_output_files
from dataset.label_table import (
    LabelTable,
    class_names_from_masks,
    read_class_names,
    render_label_table,
    suggest_label_table,
)
from dataset.nifti import load_pair, voxel_size_dhw
from dataset.nifti_pairs import NiftiPairsDataset
from evaluation.cli_common import HelpFormatter

log = logging.getLogger("inspect_dataset")

TEMPLATE = Path(__file__).resolve().parents[1] / "config" / "dataset" / "nifti_pairs.yaml"
#: Minimum below which an image is taken for CT in Hounsfield units (air is about -1000 HU; scanners pad -1024).
CT_AIR_HU = -900.0
#: Upper bound of label values while listing pairs (label_nc is what this script finds out).
MAX_LABEL_NC = 1 << 15
#: Relative tolerance under which two voxel sizes count as equal.
VOXEL_RTOL = 1e-3


@dataclass
class PairStats:
    """What one image/label pair looks like (all axes in the loaders' (D, H, W) order)."""

    sid: str
    split: str | None
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    orientation: str
    lo: float
    p_lo: float
    p_hi: float
    hi: float
    integer_valued: bool
    labels: list[int] = field(default_factory=list)
    label_path: Path | None = None


@dataclass
class Suggestion:
    """The dataset-config values suggested for a set of pairs, with the reasons shown as comments."""

    modality: str
    intensity: dict | None
    intensity_why: str
    label_nc: int
    class_names: list[str]
    label_table: LabelTable
    voxel_size: list[float] | None
    voxel_why: str
    block_size: list[int]
    block_why: str
    warnings: list[str] = field(default_factory=list)


def inspect_pair(sid: str, split: str | None, image_path: Path, label_path: Path) -> PairStats:
    """Load one pair with the project's readers (geometry checked) and measure it.

    Raises:
        DataError: unreadable file, shape or affine mismatch, non-integer labels, NaN/Inf voxels.
    """
    image, label, affine = load_pair(image_path, label_path, label_nc=None)
    lo, p_lo, p_hi, hi = (float(v) for v in np.percentile(image, [0.0, 0.5, 99.5, 100.0]))
    labels = [int(v) for v in np.unique(label)]
    if labels and labels[0] < 0:
        raise DataError(f"{label_path}: negative label value {labels[0]}; class ids start at 0 (background)")
    return PairStats(
        sid=sid,
        split=split,
        shape=tuple(int(n) for n in image.shape),
        voxel_size=voxel_size_dhw(affine),
        orientation="".join(nib.aff2axcodes(affine)),
        lo=lo,
        p_lo=p_lo,
        p_hi=p_hi,
        hi=hi,
        integer_valued=bool(np.array_equal(image, np.round(image))),
        labels=labels,
        label_path=Path(label_path),
    )


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def suggest(
    stats: list[PairStats],
    multiple: tuple[int, int, int] = (4, 8, 8),
    max_block: tuple[int, int, int] | None = None,
    modality: str = "auto",
    name: str = "nifti_pairs",
    names: dict[int, str] | None = None,
) -> Suggestion:
    """Derive dataset-config values from the measured pairs (see the module docstring for the rules).

    Args:
        stats: one entry per pair, at least one.
        multiple: (D, H, W) every block axis must be divisible by.
        max_block: optional cap per axis (rounded down to ``multiple``); larger volumes are then cropped.
        modality: ``auto`` (decide from the intensities), ``ct`` or ``mr``.
        name: the label table's name (the dataset config's).
        names: label value -> class name (``--names``); placeholders for the values it lacks.
    """
    if not stats:
        raise DataError("no image/label pairs found")
    warnings: list[str] = []
    table = _suggest_table(stats, name, names, warnings)

    # --- intensity
    lo, hi = min(s.lo for s in stats), max(s.hi for s in stats)
    if modality == "auto":
        looks_ct = lo <= CT_AIR_HU and all(s.integer_valued for s in stats)
        modality = "ct" if looks_ct else "mr"
        if lo >= -1.0 - 1e-5 and hi <= 1.0 + 1e-5:
            intensity, why = None, f"images already lie in [-1, 1] (range [{lo:.4g}, {hi:.4g}]): nothing to do"
            return _finish(stats, modality, intensity, why, multiple, max_block, warnings, table)
    if modality == "ct":
        intensity = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0}
        outside = sum(s.hi > 1000.0 or s.lo < -1000.0 for s in stats)
        why = (
            f"CT in HU (range [{lo:.0f}, {hi:.0f}]): clip to [-1000, 1000] HU and scale; {outside} of "
            f"{len(stats)} volumes have voxels outside the window (clipped; generation returns HU)"
        )
    else:
        intensity = {"kind": "percentile", "lower": 0.5, "upper": 99.5}
        why = f"MR-like intensities (range [{lo:.4g}, {hi:.4g}]): per-volume 0.5 / 99.5 percentiles -> -1 / 1"
    return _finish(stats, modality, intensity, why, multiple, max_block, warnings, table)


def _suggest_table(stats: list[PairStats], name: str, names: dict[int, str] | None, warnings: list[str]) -> LabelTable:
    """The values that occur, compacted in order and named (module docstring); what it did goes to warnings."""
    values = sorted({v for s in stats for v in s.labels} | {0})
    table = suggest_label_table(name, values, names)
    if names is not None:
        unnamed = [v for v in values if v and v not in names]
        if unnamed:
            warnings.append(f"label values {unnamed} have no name in --names (placeholders class_<value>)")
    if values != list(range(len(values))):
        log.info("%d label values occur (%s ... %s): compacted to classes 0..%d by the label table",
                 len(values), values[:6], values[-1], table.label_nc - 1)  # fmt: skip
    return table


def _finish(
    stats: list[PairStats],
    modality: str,
    intensity: dict | None,
    intensity_why: str,
    multiple: tuple[int, int, int],
    max_block: tuple[int, int, int] | None,
    warnings: list[str],
    table: LabelTable,
) -> Suggestion:

    # --- voxel size
    sizes = np.array([s.voxel_size for s in stats])
    ref = sizes[0]
    if np.all(np.abs(sizes - ref) <= VOXEL_RTOL * ref):
        voxel_size = [round(float(v), 4) for v in ref]
        voxel_why = "every file has this voxel size; generation resamples label maps of another voxel size to it"
    else:
        voxel_size = None
        lo, hi = sizes.min(0).round(3).tolist(), sizes.max(0).round(3).tolist()
        voxel_why = f"voxel sizes differ between files (from {lo} to {hi} mm): null, nothing is resampled"
        warnings.append(
            f"voxel sizes differ between files ({lo} .. {hi} mm); training uses every volume on its own grid "
            "(no resampling): resample the files to one spacing first for a meaningful model"
        )
    orientations = sorted({s.orientation for s in stats})
    if len(orientations) > 1:
        warnings.append(f"files are stored in different orientations {orientations} (montages reorient them)")

    # --- block size
    largest = [max(s.shape[a] for s in stats) for a in range(3)]
    block = [_round_up(n, m) for n, m in zip(largest, multiple, strict=True)]
    block_why = f"the largest volume {largest} rounded up to multiples of {list(multiple)}: every volume is padded"
    if max_block is not None:
        cap = [max(m, (c // m) * m) for c, m in zip(max_block, multiple, strict=True)]
        if any(b > c for b, c in zip(block, cap, strict=True)):
            block = [min(b, c) for b, c in zip(block, cap, strict=True)]
            cropped = sum(any(s.shape[a] > block[a] for a in range(3)) for s in stats)
            block_why = f"capped at --max-block {list(max_block)}: {cropped} of {len(stats)} volumes centre-cropped"
    return Suggestion(
        modality=modality,
        intensity=intensity,
        intensity_why=intensity_why,
        label_nc=table.label_nc,
        class_names=list(table.class_names),
        label_table=table,
        voxel_size=voxel_size,
        voxel_why=voxel_why,
        block_size=block,
        block_why=block_why,
        warnings=warnings,
    )


def _flow(value: object) -> str:
    """A value as one line of YAML flow syntax (JSON is YAML)."""
    return json.dumps(value)


def render_config(
    name: str, root: str, stats: list[PairStats], sug: Suggestion, table_path: Path | None = None
) -> str:
    """The dataset config as YAML text: a per-file table and the reasons as comments, then the values.

    ``table_path``: where the label table is written (the config names it); None inlines the table.
    """
    splits: dict[str, int] = {}
    for s in stats:
        splits[s.split or "unassigned"] = splits.get(s.split or "unassigned", 0) + 1
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items())
    lines = [
        f"# Dataset config written by scripts/inspect_dataset.py from {root} ({len(stats)} pairs: {split_text}).",
        f"# Save it as my_configs/dataset/{name}.yaml, name (or merge) the classes in its label table, then:",
        f"#   python train/train_vqgan.py --config-dir my_configs dataset={name} experiment=nifti_pairs_vqgan_cpu",
        "#",
        "# id | split | shape (D,H,W) | voxel mm (D,H,W) | orient. | intensity min / p0.5 / p99.5 / max | labels",
    ]
    for s in stats:
        vox = ",".join(f"{v:.3g}" for v in s.voxel_size)
        lines.append(
            f"#   {s.sid} | {s.split or '-'} | {'x'.join(map(str, s.shape))} | {vox} | {s.orientation} | "
            f"{s.lo:.4g} / {s.p_lo:.4g} / {s.p_hi:.4g} / {s.hi:.4g} | {s.labels}"
        )
    for warning in sug.warnings:
        lines.append(f"# WARNING: {warning}")
    template = OmegaConf.load(TEMPLATE)
    datamodule = OmegaConf.to_yaml(template.datamodule).rstrip().splitlines()
    lines += [
        "name: nifti_pairs   # the dataset class; checkpoints rebuild the data by this name (dataset/registry.py)",
        f"modality: {sug.modality}",
        f"label_nc: {sug.label_nc}   # the label table's classes: the label values that occur, compacted in order",
        f"class_names: {_flow(sug.class_names)}   # the table's (merge or rename there, then copy them here)",
    ]
    if table_path is not None:
        lines.append(f"label_table: {_flow(str(table_path))}   # label value -> class")
    else:
        lines.append("label_table:   # label value -> class (merge values by giving them one class name)")
        lines += [f"  {line}" for line in render_label_table(sug.label_table).splitlines() if not line.startswith("#")]
    lines += [
        f"voxel_size: {_flow(sug.voxel_size)}   # {sug.voxel_why}",
        f"block_size: {_flow(sug.block_size)}   # {sug.block_why}",
        f"# {sug.intensity_why}",
        f"intensity: {_flow(sug.intensity)}",
        f"root: {_flow(root)}",
        "datamodule:",
        *[f"  {line}" for line in datamodule],
    ]
    return "\n".join(lines) + "\n"


def inspect_folder(root: Path) -> list[PairStats]:
    """Find every pair under ``root`` (any nifti_pairs layout) and measure each once, in id order per split."""
    # The dataset lists the pairs in the layout training will use. Its label-range check must not refuse the
    # folder before the label values are known (finding them is this script's job), hence the generous bound.
    # The dataset's own summary would describe loading without an intensity spec: not what this script reports.
    dataset_log = logging.getLogger("dataset")
    level = dataset_log.level
    dataset_log.setLevel(max(level, logging.WARNING))
    try:
        found = NiftiPairsDataset(split="all", root=root, label_nc=MAX_LABEL_NC)
    finally:
        dataset_log.setLevel(level)
    stats = []
    for (sid, image, label), entry in zip(found.items, found.entries, strict=True):
        stats.append(inspect_pair(sid, entry.get("split"), image, label))
        log.debug("%s: %s", sid, "x".join(map(str, stats[-1].shape)))
    return stats


def _triple(text: list[int] | None, what: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    if len(text) != 3 or any(v < 1 for v in text):
        raise DataError(f"{what} needs three positive integers D H W, got {text}")
    return tuple(int(v) for v in text)


#: Last line of a written config: the sha256 of everything above it. ``--overwrite`` replaces a file only while
#: that line still matches (a config we wrote and nobody edited); a hand-written or hand-edited YAML stays.
CHECKSUM_PREFIX = "# inspect_dataset sha256 "


def with_checksum(text: str) -> str:
    """``text`` plus its checksum line (:data:`CHECKSUM_PREFIX`)."""
    return f"{text}{CHECKSUM_PREFIX}{hashlib.sha256(text.encode()).hexdigest()}\n"


def is_unedited_output(path: Path) -> bool:
    """Whether ``path`` is a config this tool wrote and nobody edited since (its checksum line matches)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    body, _, last = text.rstrip("\n").rpartition("\n")
    return last.startswith(CHECKSUM_PREFIX) and with_checksum(body + "\n") == text


def build_parser() -> argparse.ArgumentParser:
    """The tool's options (errors: one line, exit status 2; ``dataset.cli``)."""
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("root", type=Path, help="data folder (manifest.json, <split>/images + labels, or images + labels)")
    p.add_argument("--name", default=None, help="config file name my_configs/dataset/<name>.yaml (default: folder's)")
    p.add_argument(
        "--multiple",
        type=positive_int,
        nargs=3,
        default=[4, 8, 8],
        metavar=("D", "H", "W"),
        help="block axes divisible by these: 4 8 8 for the tiny CPU models, 4 32 32 for the paper models",
    )
    p.add_argument(
        "--max-block",
        type=positive_int,
        nargs=3,
        default=None,
        metavar=("D", "H", "W"),
        help="cap the suggested block size",
    )
    p.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto", help="intensity spec to suggest")
    p.add_argument(
        "--names",
        type=Path,
        default=None,
        help="class names: a JSON/YAML file id -> name, or a one-file-per-class folder (segmentations/liver.nii.gz)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the config to this file and the label table beside it as <name>_labels.yaml (default: print "
        "the config with the table inlined)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files this tool wrote at --out (unedited since: their checksum line)",
    )
    p.add_argument("--log-level", default="info", help="logging level (debug lists each pair as it is read)")
    return p


def command(args: argparse.Namespace, argv: list[str]) -> None:
    """Inspect ``args.root`` and write or print the suggested dataset config."""
    multiple = _triple(args.multiple, "--multiple")
    max_block = _triple(args.max_block, "--max-block")
    name = check_name(args.name or args.root.resolve().name, "--name")
    table_path = None if args.out is None else args.out.parent / f"{name}_labels.yaml"
    if args.out is not None:
        check_output_files([args.out, table_path], args.overwrite, ours=is_unedited_output)
    if args.names is not None and not args.names.exists():
        raise DataError(f"--names {args.names}: no such file or folder")
    names = read_class_names(args.names) if args.names is not None and args.names.is_file() else None
    stats = inspect_folder(args.root)
    warnings: list[str] = []
    if args.names is not None and args.names.is_dir():
        names, warnings = class_names_from_masks(args.names, [s.label_path for s in stats if s.label_path])
    sug = suggest(stats, multiple, max_block, args.modality, name=name, names=names)
    sug.warnings[:0] = warnings
    text = render_config(name, str(args.root), stats, sug, table_path)
    if args.out is None:
        sys.stdout.write(text)  # the program's output (the config), not a log message
    else:
        header = [
            f"Label table written by scripts/inspect_dataset.py from {args.root}: every label value that occurs,",
            "compacted in order. A value absent here stops training naming the file and the value. Rename classes",
            "freely; merge values by giving them one class name (then drop the unused class and copy classes into",
            f"{args.out.name}'s class_names and label_nc).",
        ]
        table = with_checksum(render_label_table(sug.label_table, header))
        atomic_write_text(table_path, table, overwrite=args.overwrite)
        atomic_write_text(args.out, with_checksum(text), overwrite=args.overwrite)
        log.info("wrote %s and its label table %s (%d pairs, %d classes)", args.out, table_path, len(stats),
                 sug.label_nc)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
