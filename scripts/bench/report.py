"""The Markdown summary of a benchmark report (written beside the JSON): machine, training, sampling, generation."""

from __future__ import annotations

from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    """A number in ``digits`` significant digits ("–" for None)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def median(row: dict, key: str) -> str:
    """The formatted median of the summary ``row[key]`` ("–" when there is none)."""
    return fmt(row[key]["median"]) if isinstance(row.get(key), dict) else "–"


def why(row: dict) -> str:
    """``status: reason`` of a row that did not run, safe inside a table cell."""
    return f"{row.get('status')}: {row.get('reason', '')}".replace("|", "/")


def note(row: dict) -> str:
    """Empty for a measured row, else :func:`why`."""
    return "" if row.get("status") == "ok" else why(row)


def _load(v: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in v) if v else "–"


def header(report: dict[str, Any]) -> list[str]:
    """Title, machine and versions."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    return [
        "# Med-LSDM benchmark",
        "",
        f"{report['created']} · device **{s['device']}** · {m['cpu_model']} ({m['cpu_count']} cores, "
        f"{m['torch_threads']} torch threads) · RAM {m['ram_total_mb']} MB · GPU {gpu} · load average "
        f"{_load(m.get('load_average_start'))} at start, {_load(m.get('load_average_end'))} at the end",
        f"python {v['python']} · torch {v['torch']} · pytorch_lightning {v['pytorch_lightning']} · monai {v['monai']}"
        f" · {'quick' if s['quick'] else 'full'} run: warm-up {s['warmup']}, repeats {s['repeats']}, batch "
        f"{s['batch_size']} · total {report['total_time_s']:.0f} s",
        "",
    ]


def training_lines(tr: dict[str, Any]) -> list[str]:
    """Training step table and its fast paths."""
    if not tr.get("results"):
        return []
    lines = [
        "## Training step (fp32)",
        "",
        f"Memory: {tr['memory_kind']}. Params: VQ-GAN with its "
        "discriminators, diffusion: the denoiser. GAN terms on (discriminator_iter_start=0).",
        "",
        "| model | image | latent | params (M) | step s (median) | first step s | peak MB | +MB | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in tr["results"]:
        mem = r.get("memory") or {}
        lines.append(
            f"| {r['model']} | {r['size']} | {r.get('latent', '–')} | {fmt(r.get('params_m'))} | "
            f"{median(r, 'step_time_s')} | {fmt(r.get('first_step_s'))} | {fmt(mem.get('peak_mb'))} | "
            f"{fmt(mem.get('increase_mb'))} | {note(r)} |"
        )
    lines += [
        "",
        "### Fast paths (training)",
        "",
        "| model | image | option | step s | first step s | fp32 step s | speedup | output rel. error "
        "| equal | first-loss rel. diff | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in tr.get("fast_paths", []):
        lines.append(
            f"| {r['model']} | {r['size']} | {r['option']} | {median(r, 'step_time_s')} | "
            f"{fmt(r.get('first_step_s'))} | {fmt(r['baseline_step_s'])} | {fmt(r.get('speedup'))} | "
            f"{fmt(r.get('output_rel_error'))} | {fmt(r.get('equal_within_tolerance'))} | "
            f"{fmt(r.get('first_loss_rel_diff'))} | {note(r)} |"
        )
    return lines + [""]


def sampling_lines(sa: dict[str, Any]) -> list[str]:
    """Sampler speed and quality table."""
    lines = ["## Sampling", ""]
    if sa.get("status") != "ok":
        return lines + [f"Skipped: {sa.get('reason', 'not run')}", ""]
    for key, c in sa["checkpoints"].items():
        ceil = c["first_stage_ceiling"]
        lines.append(
            f"- `{key}`: {c['path']} (objective {c['objective']}, T {c['num_train_timesteps']}, "
            f"guidance {c['guidance']}, {len(c['volumes'])} {sa['split']} volume(s); VQ-GAN "
            f"reconstruction ceiling SSIM {ceil['ssim']:.3f}, PSNR {ceil['psnr']:.2f} dB)"
        )
    lines += [
        "",
        f"Metrics: {sa['metric_convention']}.",
        "",
        "| ckpt | sampler | s / volume | speedup vs DDPM | SSIM | PSNR dB | ΔSSIM | ΔPSNR | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sa["results"]:
        lines.append(
            f"| {r['checkpoint']} | {r['label']} | {median(r, 'time_per_volume_s')} | "
            f"{fmt(r.get('speedup_vs_ddpm'))} | {fmt(r.get('ssim'))} | {fmt(r.get('psnr'))} | "
            f"{fmt(r.get('ssim_minus_ddpm'))} | {fmt(r.get('psnr_minus_ddpm'))} | {note(r)} |"
        )
    return lines + [""]


def _fit_lines(ge: dict[str, Any]) -> list[str]:
    fit = ge.get("fit", {})
    if fit.get("status") != "ok":
        return [f"Growth fit: {fit.get('reason', 'not available')}."]
    tv, mv = fit["time_vs_voxels"], fit["memory_increase_vs_voxels"]
    lines = [
        f"Growth over {fit['sizes']} sizes (log-log least squares): time ~ voxels^**{tv['exponent']:.2f}** "
        f"(R² {tv['r2']:.3f}); memory increase ~ voxels^**{mv['exponent']:.2f}** (R² {mv['r2']:.3f}); peak "
        f"memory ~ voxels^{fit['peak_memory_vs_voxels']['exponent']:.2f}."
    ]
    if "time_vs_windows" in fit:
        lines.append(
            f"Time ~ windows^{fit['time_vs_windows']['exponent']:.2f} (denoising windows of the pipeline's "
            f"default layout, overlap {ge['overlap']} along the tiled axes)."
        )
    if fit.get("note"):
        lines.append(f"Note: {fit['note']}.")
    return lines


def generation_lines(ge: dict[str, Any]) -> list[str]:
    """Block-wise generation table, growth fit and generation fast paths."""
    lines = ["## Block-wise generation", ""]
    if ge.get("status") != "ok":
        return lines + [f"Skipped: {ge.get('reason', 'not run')}", ""]
    lines += [
        f"Model: {ge['model']['source']}; block {ge['model']['block']}; {ge['sampler']} {ge['steps']} steps, "
        f"overlap {ge['overlap']}, guidance {ge['guidance']}.",
        f"Memory: {ge['memory_kind']}.",
        "",
        "| size | voxels | windows | time s | s / Mvoxel | peak MB | +MB | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ge["results"]:
        mem = r.get("memory") or {}
        lines.append(
            f"| {r['size']} | {r['voxels']} | {fmt(r['windows'])} | {median(r, 'time_s')} | "
            f"{fmt(r.get('time_per_megavoxel_s'))} | {fmt(mem.get('peak_mb'))} | "
            f"{fmt(mem.get('increase_mb'))} | {note(r)} |"
        )
    lines += [
        "",
        *_fit_lines(ge),
        "",
        f"Full size measured: {ge.get('full_size')}.",
        "",
        "### Fast paths (generation)",
        "",
        "| option | size | time s | speedup | first call s | mean abs diff | max abs diff | equal | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ge.get("fast_paths", []):
        lines.append(
            f"| {r['option']} | {r['size']} | {fmt(r.get('time_s'))} | {fmt(r.get('speedup'))} | "
            f"{fmt(r.get('first_call_s'))} | {fmt(r.get('mean_abs_diff'))} | {fmt(r.get('max_abs_diff'))} | "
            f"{fmt(r.get('equal_within_tolerance'))} | {note(r)} |"
        )
    return lines + [""]


def profile_lines(profiles: list[dict[str, Any]]) -> list[str]:
    """Top ops of every profile."""
    if not profiles:
        return []
    lines = ["## Profiles (top ops by self CPU time)", ""]
    for p in profiles:
        ops = ", ".join(f"{o['op']} {o['self_cpu_pct']}%" for o in p["top_ops"][:5])
        lines.append(f"- **{p['name']}** ({p['table']}): {ops}")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a report (also written beside the JSON)."""
    from scripts.bench.report_ab import before_after_lines

    lines = header(report)
    lines += before_after_lines(report.get("before_after", {}))
    lines += training_lines(report.get("training", {}))
    lines += sampling_lines(report.get("sampling", {}))
    lines += generation_lines(report.get("generation", {}))
    lines += profile_lines(report.get("profiles") or [])
    return "\n".join(lines)
