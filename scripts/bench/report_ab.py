"""The Markdown of the before/after section: ratios measured in one run, variants alternated in one process."""

from __future__ import annotations

from typing import Any

from scripts.bench.report import fmt, median, note


def training_ab_lines(tr: dict[str, Any]) -> list[str]:
    """VQ-GAN step time and child peak RSS per variant, with the ratios to "before"."""
    lines = ["### VQ-GAN training step (target: time <= 0.7x; peak memory <= 0.6x with checkpointing)", ""]
    if tr.get("status") != "ok":
        return lines + [note(tr), ""]
    lines += [
        f"Image {tr['size']}, {tr.get('label_nc')} label classes, batch 1, GAN terms on, {tr['rounds']} rounds of "
        f"{tr['steps_per_turn']} steps per variant, alternated. Memory: {tr['memory_kind']}; fit +MB: its growth "
        "over the RSS before the fit.",
        "",
        "| model | variant | switches changed | step s (median) | time ratio | peak MB | peak ratio "
        "| fit +MB | fit +MB ratio | max rel. output diff | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in tr["models"]:
        if e.get("status") != "ok":
            lines.append(f"| {e['model']} | – | – | – | – | – | – | – | – | – | {note(e)} |")
            continue
        for v in e["step_time_s"]:
            mem = e["memory"].get(v, {})
            grow = mem["peak_mb"] - mem["rss_before_fit_mb"] if mem.get("status") == "ok" else None
            changed = ", ".join(e["differs"].get(v, [])) or "–"
            one = 1.0 if v == "before" else None
            r = e["ratios"]
            lines.append(
                f"| {e['model']} | {v} | {changed} | {median(e['step_time_s'], v)} | "
                f"{fmt(r.get(f'time {v}', one))} | {fmt(mem.get('peak_mb'), 4)} | "
                f"{fmt(r.get(f'peak memory {v}', one))} | {fmt(grow, 4)} | "
                f"{fmt(r.get(f'training memory {v}', one))} | "
                f"{fmt(e['max_rel_output_diff_vs_before'].get(v))} | {note(mem)} |"
            )
    lines.append("")
    for e in tr["models"]:
        if e.get("status") == "ok":
            whole = ", ".join(f"{v} {fmt(x)}" for k, x in e["ratios"].items() if k.startswith("process peak ")
                              for v in [k.removeprefix("process peak ")])  # fmt: skip
            lines.append(f"- {e['model']}: whole-process ru_maxrss ratios (imports and model included): {whole}.")
        for k, r in (e.get("resolved") or {}).items():
            if r.get("reason"):
                lines.append(f"- `{k}` not available for {e['model']}: {r['reason']}.")
    return lines + [""]


def sampling_ab_lines(sa: dict[str, Any]) -> list[str]:
    """Per-step sampling time with and without the SPADE cache."""
    lines = ["### Sampling step (target: <= 0.8x with the step-invariant cache)", ""]
    if sa.get("status") != "ok":
        return lines + [note(sa), ""]
    lines += [
        f"{sa['model']}, label map {sa['size']} (latent {sa.get('latent')}), {sa['sampler']} {sa['steps']} "
        f"steps, guidance {fmt(sa.get('guidance'))}, {sa['rounds']} rounds; {sa['timing']}.",
        "",
        "| variant | s / step (median) | amortised s / step |",
        "| --- | --- | --- |",
    ]
    for v in sa["amortised_step_time_s"]:
        lines.append(f"| {v} | {median(sa.get('step_time_s', {}), v)} | {median(sa['amortised_step_time_s'], v)} |")
    lines += [
        "",
        f"Ratio cache / no cache: **{fmt(sa.get('ratio'))}** per step, {fmt(sa.get('amortised_ratio'))} amortised; "
        f"latents bit-identical: {fmt(sa.get('bit_identical'))} (max abs diff {fmt(sa.get('max_abs_diff'))}).",
        "",
    ]
    return lines


def generation_ab_lines(ge: dict[str, Any]) -> list[str]:
    """Time per voxel relative to one block, and the seam ratio, per window layout and size."""
    lines = ["### Generation time per voxel vs one block (target: <= 1.5x at 64x128x128)", ""]
    if ge.get("status") not in ("ok", "error") or not ge.get("results"):
        return lines + [note(ge), ""]
    layouts = "; ".join(f"`{k}`: {v}" for k, v in ge["layouts"].items())
    lines += [
        f"{ge['model']['source']}; block {ge['block']}; {ge['sampler']} {ge['steps']} steps, overlap "
        f"{ge['overlap']}; layouts {layouts}. Seam ratio: {ge['seam_metric']}.",
        "",
    ]
    if ge.get("before"):
        lines += [f"Before: {ge['before']}.", ""]
    lines += [
        "| layout | size | windows | time s | time vs block layout | s / Mvoxel | per voxel vs block | seam ratio "
        "| note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ge["results"]:
        lines.append(
            f"| {r['layout']} | {r['size']} | {fmt(r.get('windows'))} | {median(r, 'time_s')} | "
            f"{fmt(r.get('time_vs_before'))} | {fmt(r.get('time_per_megavoxel_s'))} | "
            f"{fmt(r.get('per_voxel_vs_block'))} | {fmt(r.get('seam_ratio'))} | {note(r)} |"
        )
    if ge.get("status") == "error":
        lines += ["", f"Stopped early: {ge.get('reason')}."]
    return lines + [""]


def before_after_lines(ba: dict[str, Any]) -> list[str]:
    """The whole before/after section ("" where it was skipped)."""
    if not ba or ba.get("status") == "skipped":
        return []
    lines = ["## Before / after (one run, variants alternated in one process)", ""]
    lines += training_ab_lines(ba.get("training", {}))
    lines += sampling_ab_lines(ba.get("sampling", {}))
    lines += generation_ab_lines(ba.get("generation", {}))
    return lines
