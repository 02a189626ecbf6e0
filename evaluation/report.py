"""The evaluation report: a JSON file with every number and its settings, and a Markdown table next to it.

JSON has no infinity or NaN, so non-finite floats are written as strings ``"inf"`` / ``"-inf"`` and NaN as
``null`` (PSNR of identical volumes is ``"inf"``; a Dice of a class absent from both prediction and ground
truth is ``null`` and is counted separately). Both files are written with ``dataset.files.atomic_write_text``
(temporary file in the same folder, fsync, rename; permissions follow the umask), and only after every metric
has been computed, so a failed run leaves no partial report. ``--out`` names the JSON report and the Markdown
goes next to it with ``.md``; an ``--out`` ending in ``.md`` names the Markdown and the JSON gets ``.json``
(:func:`report_paths`), so the two never collide.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from dataset.files import PRODUCER, atomic_write_text

# The paper's column order, then the columns it does not have.
PAPER_COLUMNS = (
    ("fid", "FID"),
    ("fid3d", "3D-FID"),
    ("lpips", "LPIPS"),
    ("ssim", "SSIM"),
    ("rmse", "RMSE"),
    ("psnr", "PSNR"),
)
EXTRA_COLUMNS = (("msssim", "MS-SSIM"), ("ssim2d", "SSIM-2D"))
_FORMATS = {"fid": "{:.2f}", "fid3d": "{:.4g}", "psnr": "{:.2f}"}
_PACKAGES = ("torch", "torchvision", "monai", "numpy", "scipy", "nibabel", "scikit-image", "lpips", "pytorch-fid")


def jsonable(obj: object) -> object:
    """Recursively turn numpy/torch/Path values into JSON types; inf → "inf"/"-inf", NaN → None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def summarise(values: list[float]) -> dict:
    """Mean, std (population), median, min, max and n of per-volume values (inf propagates to the mean)."""
    if not values:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return {
            "n": int(arr.size),
            "mean": float(arr.mean()),
            "std": float(arr.std()),
            "median": float(np.median(arr)),
            "min": float(arr.min()),
            "max": float(arr.max()),
        }


def environment() -> dict:
    """Python, platform and package versions for the report."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def report_paths(out: Path) -> tuple[Path, Path]:
    """(JSON path, Markdown path) of a report named by ``--out``; never the same file.

    ``r.json`` → (``r.json``, ``r.md``); ``r.md`` → (``r.json``, ``r.md``); ``r`` → (``r``, ``r.md``).
    """
    out = Path(out)
    if out.suffix.lower() == ".md":
        return out.with_suffix(".json"), out
    return out, out.with_suffix(".md")


def header(tool: str, argv: list[str] | None) -> dict:
    """Common head of every report (``producer`` marks it as written by this project)."""
    return {
        "producer": PRODUCER,
        "tool": tool,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": list(argv) if argv is not None else sys.argv[1:],
        "environment": environment(),
    }


def fmt(value: object, key: str = "") -> str:
    """Number as shown in the Markdown table ("–" when absent, "inf" when infinite)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return _FORMATS.get(key, "{:.4f}").format(value)


def _headline(block: dict) -> object:
    return block.get("value", block.get("mean"))


def metrics_markdown(report: dict) -> str:
    """Markdown for ``compute_metrics``: the paper-order table, settings, privacy audit, warnings."""
    metrics = report["metrics"]
    cols = [(k, n) for k, n in PAPER_COLUMNS + EXTRA_COLUMNS if k in metrics]
    lines = [f"# Evaluation: {report['inputs']['fake_dir']} vs {report['inputs']['real_dir']}", ""]
    if report.get("random_weights"):
        lines += ["**RANDOM WEIGHTS (plumbing test): FID, 3D-FID and LPIPS below are meaningless.**", ""]
    lines += ["| " + " | ".join(n for _, n in cols) + " |", "|" + "---|" * len(cols)]
    cells = []
    for key, _ in cols:
        block = metrics[key]
        cell = fmt(_headline(block), key)
        if "std" in block and block.get("n", 0) > 1 and math.isfinite(block.get("mean", math.nan)):
            cell += " ± " + fmt(block["std"], key)
        cells.append(cell)
    lines += ["| " + " | ".join(cells) + " |", ""]
    inputs = report["inputs"]
    lines += [
        f"- {inputs['n_pairs']} synthetic volumes paired with {inputs['n_real']} real volumes "
        f"(pairing: {inputs['pairing_rule']}).",
    ]
    for key, name in cols:
        lines.append(f"- {name}: {metrics[key].get('definition', '')}")
    lines += ["", "## Settings that change a value", ""] + settings_lines(report)
    if "privacy" in report:
        lines += ["", privacy_markdown(report["privacy"])]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _by_shape(block: dict, describe: Callable[[dict], str]) -> str:
    return "; ".join(f"{shape}: {describe(v)}" for shape, v in block.get("settings_by_shape", {}).items())


def settings_lines(report: dict) -> list[str]:
    """The settings of a ``compute_metrics`` report that change its numbers, one Markdown bullet each."""
    metrics, lines = report["metrics"], []
    for side in ("real", "fake"):
        rng = report["intensity"][side]
        lines.append(
            f"- data range ({side}): [{rng['range'][0]:g}, {rng['range'][1]:g}] from {rng.get('source', 'stated')}, "
            f"mapped {rng['mapping']}; clip {'on' if rng['clip'] else 'off'}, clipped voxels {rng['clipped_voxels']}"
        )
    if "ssim" in metrics:
        lines.append(
            "- SSIM window per shape: " + _by_shape(metrics["ssim"], lambda v: "x".join(map(str, v["window"])))
        )
    if "ssim2d" in metrics:
        lines.append(
            "- SSIM-2D window per shape: " + _by_shape(metrics["ssim2d"], lambda v: "x".join(map(str, v["window"])))
        )
    if "msssim" in metrics:
        lines.append(
            "- MS-SSIM per shape: "
            + _by_shape(
                metrics["msssim"],
                lambda v: f"{v['scales']} scales, window {'x'.join(map(str, v['window']))}, weights {v['weights']}",
            )
        )
    if "lpips" in metrics:
        lines.append(f"- LPIPS: slices along {metrics['lpips']['slice_axis']}, every {metrics['lpips']['slice_step']}")
    if "fid" in metrics:
        lines.append(f"- FID: slices along D, every {metrics['fid']['slice_step']}; {metrics['fid']['input']}")
    if "fid3d" in metrics:
        lines.append(
            f"- 3D-FID: extractor MedicalNet ResNet-50 (23 datasets); input convention "
            f"`{metrics['fid3d']['input_convention']}`: {metrics['fid3d']['input']}"
        )
    for key, rec in report.get("weights", {}).items():
        sha = (rec.get("sha256") or "random init")[:16]
        lines.append(f"- weights `{key}`: {rec.get('file') or 'none'} ({sha})")
    for key, reason in report.get("skipped_metrics", {}).items():
        lines.append(f"- not computed: {key} ({reason})")
    return lines


def privacy_markdown(audit: dict) -> str:
    """Markdown section for the privacy audit."""
    lines = ["## Privacy audit (nearest training volume of each synthetic volume)", ""]
    lines += ["| measure | min | p5 | median | p95 | max | copy threshold |", "|---|---|---|---|---|---|---|"]
    for key, name in (("nn_ssim", "NN SSIM (higher = closer)"), ("nn_feature_distance", "NN feature distance")):
        d = audit["summary"][key]
        thr = audit["thresholds"][key]
        row = [fmt(d.get(p)) for p in ("min", "p5", "median", "p95", "max")]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {fmt(thr['value'])} |")
    lines += ["", f"- features: {audit['features']}; {audit['rule']}"]
    flagged = audit["suspected_copies"]
    lines.append(f"- suspected copies: {len(flagged)}")
    for item in flagged:
        lines.append(
            f"  - `{item['fake']}` ~ `{item['nearest_train_ssim']}` (SSIM {fmt(item['nn_ssim'])}, "
            f"feature distance {fmt(item['nn_feature_distance'])}; {', '.join(item['reasons'])})"
        )
    return "\n".join(lines)


def dice_markdown(report: dict) -> str:
    """Markdown for the Dice protocol: one row per evaluated image set, one column per foreground class."""
    rows = report["dice"]
    names = report["class_names"][1:]
    lines = [f"# Dice protocol ({report['command_name']})", ""]
    lines += ["| data | " + " | ".join(names) + " | mean |", "|" + "---|" * (len(names) + 2)]
    for label, block in rows.items():
        per_class = [fmt(block["per_class"][n]["mean"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(per_class) + f" | {fmt(block['mean'])} |")
    lines += ["", f"- {report['definition']}"]
    for key, value in report.get("notes", {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict, markdown: str) -> tuple[Path, Path]:
    """Write the JSON report and its Markdown twin (:func:`report_paths`) atomically.

    Whether existing files may be replaced was checked before the run (``cli_common.check_output_files``).

    Returns:
        (JSON path, Markdown path).
    """
    json_path, md_path = report_paths(out)
    text = json.dumps(jsonable(report), indent=2, allow_nan=False)
    atomic_write_text(json_path, text + "\n")
    atomic_write_text(md_path, markdown)
    return json_path, md_path
