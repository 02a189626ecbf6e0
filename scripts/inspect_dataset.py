"""Read a folder of image/label NIfTI pairs once and print a dataset config for it, ready to paste.

    python scripts/inspect_dataset.py DATA_ROOT --name mydata > my_configs/dataset/mydata.yaml
    python scripts/inspect_dataset.py DATA_ROOT --name mydata --out my_configs/dataset/mydata.yaml

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
- ``label_nc`` and ``class_names``: from the largest label value (placeholder names; rename them);
- ``modality`` and ``intensity``: CT in Hounsfield units (air near -1000) -> ``ct_window`` [-1000, 1000] HU;
  already in [-1, 1] -> null; otherwise MR -> per-volume percentiles 0.5 / 99.5.
"""

from __future__ import annotations

import argparse
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
from dataset.files import atomic_write_text, check_name
from dataset.nifti import load_pair, voxel_size_dhw
from dataset.nifti_pairs import NiftiPairsDataset
from evaluation.cli_common import HelpFormatter, check_output_files, run_cli

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


@dataclass
class Suggestion:
    """The dataset-config values suggested for a set of pairs, with the reasons shown as comments."""

    modality: str
    intensity: dict | None
    intensity_why: str
    label_nc: int
    class_names: list[str]
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
    )


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def suggest(
    stats: list[PairStats],
    multiple: tuple[int, int, int] = (4, 8, 8),
    max_block: tuple[int, int, int] | None = None,
    modality: str = "auto",
) -> Suggestion:
    """Derive dataset-config values from the measured pairs (see the module docstring for the rules).

    Args:
        stats: one entry per pair, at least one.
        multiple: (D, H, W) every block axis must be divisible by.
        max_block: optional cap per axis (rounded down to ``multiple``); larger volumes are then cropped.
        modality: ``auto`` (decide from the intensities), ``ct`` or ``mr``.
    """
    if not stats:
        raise DataError("no image/label pairs found")
    warnings: list[str] = []

    # --- intensity
    lo, hi = min(s.lo for s in stats), max(s.hi for s in stats)
    if modality == "auto":
        looks_ct = lo <= CT_AIR_HU and all(s.integer_valued for s in stats)
        modality = "ct" if looks_ct else "mr"
        if lo >= -1.0 - 1e-5 and hi <= 1.0 + 1e-5:
            intensity, why = None, f"images already lie in [-1, 1] (range [{lo:.4g}, {hi:.4g}]): nothing to do"
            return _finish(stats, modality, intensity, why, multiple, max_block, warnings)
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
    return _finish(stats, modality, intensity, why, multiple, max_block, warnings)


def _finish(
    stats: list[PairStats],
    modality: str,
    intensity: dict | None,
    intensity_why: str,
    multiple: tuple[int, int, int],
    max_block: tuple[int, int, int] | None,
    warnings: list[str],
) -> Suggestion:
    # --- labels
    values = sorted({v for s in stats for v in s.labels})
    label_nc = max(2, values[-1] + 1 if values else 2)
    unused = sorted(set(range(label_nc)) - set(values))
    if unused:
        warnings.append(f"label values {unused} occur in no file (label_nc={label_nc} counts them anyway)")
    class_names = ["background", *[f"class_{k}" for k in range(1, label_nc)]]

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
        label_nc=label_nc,
        class_names=class_names,
        voxel_size=voxel_size,
        voxel_why=voxel_why,
        block_size=block,
        block_why=block_why,
        warnings=warnings,
    )


def _flow(value: object) -> str:
    """A value as one line of YAML flow syntax (JSON is YAML)."""
    return json.dumps(value)


def render_config(name: str, root: str, stats: list[PairStats], sug: Suggestion) -> str:
    """The dataset config as YAML text: a per-file table and the reasons as comments, then the values."""
    splits: dict[str, int] = {}
    for s in stats:
        splits[s.split or "unassigned"] = splits.get(s.split or "unassigned", 0) + 1
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items())
    lines = [
        f"# Dataset config written by scripts/inspect_dataset.py from {root} ({len(stats)} pairs: {split_text}).",
        f"# Save it as my_configs/dataset/{name}.yaml, rename the classes, then:",
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
        f"label_nc: {sug.label_nc}",
        f"class_names: {_flow(sug.class_names)}   # placeholders: one name per label value",
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("root", type=Path, help="data folder (manifest.json, <split>/images + labels, or images + labels)")
    p.add_argument("--name", default=None, help="config file name my_configs/dataset/<name>.yaml (default: folder's)")
    p.add_argument(
        "--multiple",
        type=int,
        nargs=3,
        default=[4, 8, 8],
        metavar=("D", "H", "W"),
        help="block axes divisible by these: 4 8 8 for the tiny CPU models, 4 32 32 for the paper models",
    )
    p.add_argument(
        "--max-block", type=int, nargs=3, default=None, metavar=("D", "H", "W"), help="cap the suggested block size"
    )
    p.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto", help="intensity spec to suggest")
    p.add_argument("--out", type=Path, default=None, help="write the config to this file (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--log-level", default="info", help="logging level (debug lists each pair as it is read)")
    return p


def command(args: argparse.Namespace, argv: list[str]) -> None:
    """Inspect ``args.root`` and write or print the suggested dataset config."""
    multiple = _triple(args.multiple, "--multiple")
    max_block = _triple(args.max_block, "--max-block")
    name = check_name(args.name or args.root.resolve().name, "--name")
    if args.out is not None:
        check_output_files([args.out], args.overwrite)
    stats = inspect_folder(args.root)
    text = render_config(name, str(args.root), stats, suggest(stats, multiple, max_block, args.modality))
    if args.out is None:
        sys.stdout.write(text)  # the program's output (the config), not a log message
    else:
        atomic_write_text(args.out, text, overwrite=args.overwrite)
        log.info("wrote %s (%d pairs)", args.out, len(stats))


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
