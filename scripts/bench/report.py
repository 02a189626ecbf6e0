"""The Markdown summary of a benchmark report (written beside the JSON), and the comparison with an older report:
``--compare OLD`` (a report of this benchmark, typically run on another commit) matches the rows of each table by
their identifying fields and adds a "new/old" ratio column for each compared quantity."""

from __future__ import annotations

from typing import Any

# table -> (dotted path of its rows, the fields that identify a row, columns: (header, dotted path, compared))
TABLES: dict[str, tuple[str, tuple[str, ...], list[tuple[str, str, bool]]]] = {
    "training": ("training.results", ("model", "size", "classes", "variant"), [
        ("model", "model", False), ("image", "size", False), ("classes", "classes", False),
        ("variant", "variant", False), ("x first variant step", "vs_first_variant.step", False),
        ("x first variant peak", "vs_first_variant.peak", False),
        ("latent", "latent", False), ("params (M)", "params_m", False), ("step s", "step_time_s.median", True),
        ("x first table", "vs_first_table", False), ("first step s", "first_step_s", False),
        ("peak MB", "memory.peak_mb", True), ("+MB", "memory.increase_mb", False)]),
    "training_fast": ("training.fast_paths", ("model", "size", "classes", "option"), [
        ("model", "model", False), ("image", "size", False), ("option", "option", False),
        ("step s", "step_time_s.median", True), ("fp32 step s", "baseline_step_s", False),
        ("speedup", "speedup", False), ("output rel. error", "output_rel_error", False),
        ("equal", "equal_within_tolerance", False)]),
    "sampling": ("sampling.results", ("checkpoint", "label"), [
        ("ckpt", "checkpoint", False), ("sampler", "label", False), ("passes/step", "passes_per_step", False),
        ("s / volume", "time_per_volume_s.median", True), ("denoise s", "denoise_s.median", False),
        ("decode s", "decode_s.median", False), ("speedup", "speedup", False), ("SSIM", "ssim", True),
        ("PSNR dB", "psnr", False), ("Dice", "dice", False), ("nn-SSIM", "nn_ssim", False),
        ("ΔSSIM", "ssim_minus_ref", False), ("ΔPSNR", "psnr_minus_ref", False)]),
    "generation": ("generation.results", ("size",), [
        ("size", "size", False), ("voxels", "voxels", False), ("windows", "windows", False),
        ("time s", "time_s.median", True), ("denoise s", "denoise_s", False), ("decode s", "decode_s", False),
        ("s / Mvoxel", "time_per_megavoxel_s", False), ("peak MB", "memory.peak_mb", True),
        ("+MB", "memory.increase_mb", False), ("seam ratio", "seam_ratio", False)]),
    "generation_fast": ("generation.fast_paths", ("option", "size"), [
        ("option", "option", False), ("size", "size", False), ("time s", "time_s", True),
        ("speedup", "speedup", False), ("first call s", "first_call_s", False),
        ("mean abs diff", "mean_abs_diff", False), ("max abs diff", "max_abs_diff", False),
        ("equal", "equal_within_tolerance", False)]),
}  # fmt: skip


def get(row: Any, path: str) -> Any:
    """``row["a"]["b"]`` for the path ``"a.b"`` (None where any part is missing)."""
    for part in path.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def compare(report: dict[str, Any], old: dict[str, Any], old_path: str) -> dict[str, Any]:
    """new / old of every compared quantity of every row that both reports measured, per table (a key field an
    older report lacks, e.g. ``classes``, counts as unset)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, (rows, keys, columns) in TABLES.items():
        before = {tuple(r.get(k) for k in keys): r for r in get(old, rows) or [] if r.get("status") == "ok"}
        for r in get(report, rows) or []:
            o = before.get(tuple(r.get(k) for k in keys))
            if o is not None and r.get("status") == "ok":
                ratios = {h: ratio(get(r, p), get(o, p)) for h, p, compared in columns if compared}
                tables.setdefault(table, []).append({**{k: r.get(k) for k in keys}, **ratios})
    return {"against": old_path, "old_created": old.get("created"), "old_commit": get(old, "versions.commit"),
            "tables": tables}  # fmt: skip


def ratio(new: Any, old: Any) -> float | None:
    """``new / old`` (of the means of mean ± std values), or None when either is missing or ``old`` is not positive."""
    new, old = (v.get("mean") if isinstance(v, dict) else v for v in (new, old))
    return new / old if new is not None and old is not None and old > 0 else None


def fmt(v: Any, digits: int = 3) -> str:
    """A number in ``digits`` significant digits ("–" for None, yes / NO for booleans, mean ± std)."""
    if isinstance(v, dict) and "mean" in v:
        return f"{fmt(v['mean'], digits)} ± {fmt(v['std'], 2)}"
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e3 else f"{v:.0f}"
    return str(v)


def note(row: dict) -> str:
    """Empty for a measured row, else ``status: reason`` (safe inside a table cell)."""
    return "" if row.get("status") == "ok" else f"{row.get('status')}: {row.get('reason', '')}".replace("|", "/")


def table(report: dict, name: str) -> list[str]:
    """The Markdown table ``name`` (columns no row fills are left out), with "new/old" columns under --compare."""
    path, keys, columns = TABLES[name]
    rows = get(report, path) or []
    shown = [(h, p) for h, p, _ in columns if any(get(r, p) is not None for r in rows)]
    headers = [h for h, _ in shown]
    compared = report.get("compare")
    ratios = {tuple(r.get(k) for k in keys): r for r in get(compared, f"tables.{name}") or []}
    if compared:
        headers += [f"{h} new/old" for h, _, c in columns if c]
    lines = ["| " + " | ".join([*headers, "note"]) + " |", "|" + " --- |" * (len(headers) + 1)]
    for r in rows:
        cells = [get(r, p) for _, p in shown]
        if compared:
            cells += [get(ratios.get(tuple(r.get(k) for k in keys)), h) for h, _, c in columns if c]
        lines.append("| " + " | ".join([*map(fmt, cells), note(r)]) + " |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a report: machine, then one part per section."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    load = "/".join(f"{x:.2f}" for x in m.get("load_average_start") or []) or "–"
    lines = [
        "# Med-LSDM benchmark", "",
        f"{report['created']} · commit {v.get('commit') or '–'} · device **{s['device']}** · {m['cpu_model']} "
        f"({m['cpu_count']} cores, {m['torch_threads']} torch threads) · RAM {m['ram_total_mb']} MB · GPU "
        f"{get(m, 'gpu.name') or 'none'} · load average {load} at the start",
        f"python {v['python']} · torch {v['torch']} · pytorch_lightning {v['pytorch_lightning']} · monai "
        f"{v['monai']} · {'quick' if s['quick'] else 'full'} run: warm-up {s['warmup']}, repeats {s['repeats']} "
        f"· total {report['total_time_s']:.0f} s", "",
    ]  # fmt: skip
    if c := report.get("compare"):
        old = f"{c['against']} (commit {c['old_commit'] or '–'}, {c['old_created']})"
        lines += [f"Compared with {old}: new/old ratios, below 1 is faster or smaller.", ""]
    tr, sa, ge = (report.get(k) or {"status": "not run"} for k in ("training", "sampling", "generation"))
    for title, section in (("Training step", tr), ("Sampling", sa), ("Block-wise generation", ge)):
        if section.get("status") != "ok":
            lines += [f"## {title}", "", note(section), ""]
    if tr.get("status") == "ok":
        lines += ["## Training step", "", f"fp32, GAN terms on. Memory: {tr['memory_kind']}.", "",
                  *table(report, "training"), "### Precision and compile (training)", "",
                  *table(report, "training_fast")]  # fmt: skip
    if sa.get("status") == "ok":
        lines += ["## Sampling", ""]
        for key, c in sa["checkpoints"].items():
            ceiling = ", ".join(f"{k} {fmt(x)}" for k, x in c["first_stage_ceiling"].items())
            lines.append(f"- `{key}`: {c['path']} (objective {c['objective']}, T {c['num_train_timesteps']}, guidance "
                         f"{c['guidance']}, {len(c['volumes'])} test volume(s); VQ-GAN reconstruction "
                         f"ceiling: {ceiling}; real volumes' Dice {fmt(c.get('real_dice'))})")  # fmt: skip
        lines += ["", f"Seeds {sa['seeds']} (quality: mean ± std over seeds); reference row {sa['reference']}. "
                  f"Metrics: {sa['metric_convention']}.", "", *table(report, "sampling")]  # fmt: skip
    if ge.get("status") == "ok":
        lines += [
            "## Block-wise generation", "",
            f"Model: {ge['model']['source']}; block {ge['model']['block']}; {ge['sampler']} {ge['steps']} steps, "
            f"window {ge['window']}, overlap {ge['overlap']}, guidance {ge['guidance']}; one sampling step at the "
            f"block size (steady state): {fmt(get(ge, 'step_time_s.median'))} s. Memory: {ge['memory_kind']}. "
            "Seam ratio: evaluation.seams.", "", *table(report, "generation"), fit_line(ge["fit"]), "",
            "### Precision and compile (generation)", "", *table(report, "generation_fast"),
        ]  # fmt: skip
    return "\n".join(lines)


def fit_line(fit: dict[str, Any]) -> str:
    """The growth exponents of time and memory (log-log least squares), one sentence."""
    if fit.get("status") != "ok":
        return f"Growth fit: {fit.get('reason', 'not available')}."
    laws = [  # "time_vs_voxels" -> time ~ voxels^k
        f"{key.replace('_vs_', ' ~ ').replace('_', ' ')}^**{f['exponent']:.2f}** (R² {f['r2']:.3f})"
        for key, f in fit.items()
        if "_vs_" in key
    ]
    return f"Growth over {fit['sizes']} sizes (log-log least squares): {'; '.join(laws)}."
