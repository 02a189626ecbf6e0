"""How good is an edit of a real scan (SPEC 13)? Preservation, in-region fidelity, seams, adherence.

    python -m evaluation.edit_metrics --ckpt STAGE2.ckpt --images REAL_DIR --labels REAL_DIR/labels --out edit.json \
        --radii-mm 10 16 --structure 2 --seeds 0 1 2 [--segmenter SEG.pt --grow 2:6 --shrink 3:6]
    # several checkpoints in one table (same subjects, seeds and regions), each named:
    python -m evaluation.edit_metrics --ckpt plain=PLAIN.ckpt --ckpt inpaint=INPAINT.ckpt ...

Metrics (pure functions, known-answer tested):

* **preservation**: max |output - input| outside the region (exactly 0 in file units) and inside the band.
* **fidelity** (BraTS 2023 local-synthesis protocol): a region of a held-out real scan is hidden without changing its
  labels and regenerated; SSIM, PSNR and MSE inside the hidden region against the truth, images mapped to [0, 1] by
  the data range (SSIM: the 3D Gaussian SSIM map of :mod:`evaluation.image_metrics`, averaged over the region's
  voxels). Regions: spheres of each ``--radii-mm`` at seeded random centres inside the body (``labels > 0``), and
  the whole ``--structure`` grown by one voxel's largest size. Methods in one table: the edit (RePaint on the one
  sampling path, :mod:`diffusion.editing.inpaint`), the stage-2 synthesis of the whole volume with the same seed
  pasted into the region (same compositing weights), and a smoothed fill from the surrounding voxels
  (:func:`smoothed_fill`). With several ``--ckpt NAME=PATH``, the edit and the pasted synthesis are rows of each
  checkpoint (``edit:NAME``, ``pasted:NAME``; e.g. a plain model next to one trained with ``inpaint_inputs``) and
  the smoothed fill is one row.
* **seam**: :func:`evaluation.seams.boundary_seam_ratio` at the hidden region's boundary (1 = no seam), for each
  method and for the truth itself (the anatomy's own step there).
* **adherence** (``--segmenter``): a segmenter trained on real data (``evaluation/segmentation.py train``) run on
  the edited scan: Dice of the edited classes inside the region against the edited map, next to the unedited scan
  against the edited map (how far the scan had to move) and against its own map (the segmenter's accuracy there).

The report is a JSON file with every case and a Markdown table (mean ± std over cases and seeds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from dataset import DataError
from dataset.dice import per_class_dice
from dataset.nifti import load_image, load_label, voxel_size_dhw
from evaluation.image_metrics import ssim_maps, ssim_window
from evaluation.report import fmt, header, summarise, write_report
from evaluation.seams import boundary_seam_ratio

log = logging.getLogger(__name__)
#: The methods of a report on one unnamed checkpoint.
METHODS = ("edit", "pasted", "smoothed")


def parse_checkpoints(values: Sequence[str]) -> list[tuple[str | None, Path]]:
    """``--ckpt`` values ``[NAME=]PATH`` as (name, path) pairs; several checkpoints need distinct names.

    A value is named when the text before its first ``=`` is a name (letters, digits, ``_``, ``-``, ``.``, no path
    separator); otherwise the whole value is the path.

    Raises:
        ValueError: several checkpoints and one without a name, or a name given twice.
    """
    out: list[tuple[str | None, Path]] = []
    for v in values:
        name, sep, rest = v.partition("=")
        if sep and name and rest and all(c.isalnum() or c in "_-." for c in name):
            out.append((name, Path(rest)))
        else:
            out.append((None, Path(v)))
    names = [n for n, _ in out]
    if len(out) > 1 and None in names:
        raise ValueError("several --ckpt: name each one, --ckpt NAME=PATH")
    dup = sorted({n for n in names if n is not None and names.count(n) > 1})
    if dup:
        raise ValueError(f"--ckpt names {dup[0]!r} twice; give each checkpoint its own name")
    return out


def method_names(names: Sequence[str | None]) -> list[str]:
    """The report's methods for checkpoint names: ``edit``/``pasted`` of each (``edit:NAME``), then ``smoothed``."""
    per = [f"{m}:{n}" if n is not None else m for n in names for m in ("edit", "pasted")]
    return [*per, "smoothed"]


# ------------------------------------------------------------------------------------------------------- metrics
def preservation(original: np.ndarray, output: np.ndarray, region: np.ndarray, band: np.ndarray) -> dict[str, float]:
    """Max |output - original| outside ``region`` (must be 0) and inside ``band`` (file units)."""
    diff = np.abs(output.astype(np.float64) - original.astype(np.float64))
    outside = diff[~region]
    return {
        "max_abs_outside": float(outside.max()) if outside.size else 0.0,
        "max_abs_band": float(diff[band].max()) if band.any() else 0.0,
    }


def region_fidelity(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, data_range: Sequence[float]
) -> dict[str, float]:
    """SSIM, PSNR (dB) and MSE of ``pred`` vs ``truth`` inside ``mask``, both mapped to [0, 1] by ``data_range``.

    SSIM is the mean, over the mask's voxels, of the 3D SSIM map of the whole volumes (Gaussian window,
    :func:`evaluation.image_metrics.ssim_maps`); masked voxels closer to the volume's edge than half a window are
    not window centres and do not count.
    """
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data range must have lo < hi, got {list(data_range)}")
    if not mask.any():
        raise ValueError("empty region")
    x = np.clip((pred.astype(np.float64) - lo) / (hi - lo), 0, 1)
    y = np.clip((truth.astype(np.float64) - lo) / (hi - lo), 0, 1)
    mse = float(((x - y)[mask] ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    win = ssim_window(mask.shape)
    smap = ssim_maps(torch.from_numpy(x)[None], torch.from_numpy(y)[None], win)[0][0].numpy()
    # valid mode: map voxel i is centred on volume voxel i + w // 2
    centres = mask[tuple(slice(w // 2, w // 2 + n) for w, n in zip(win, smap.shape))]
    ssim = float(smap[centres].mean()) if centres.any() else float("nan")
    return {"ssim": ssim, "psnr": psnr, "mse": mse}


def smoothed_fill(image: np.ndarray, known: np.ndarray, voxel_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Fill the unknown voxels smoothly from the known ones around them: the harmonic (Laplace) fill.

    The unknown voxels solve the discrete Laplace equation (6 face neighbours, weighted by 1 / spacing² so it is
    isotropic in mm) with the known voxels as boundary values: the smoothest fill that meets the surrounding
    intensities, exact for linear ramps (the classic baseline of inpainting challenges).

    Args:
        image: (D, H, W) values.
        known: (D, H, W) bool, True where the values are kept.
        voxel_mm: voxel size (D, H, W).

    Returns:
        (D, H, W) float32: ``image`` where known, the fill elsewhere.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import cg

    if not known.any():
        raise ValueError("nothing known to fill from")
    out = image.astype(np.float64, copy=True)
    unknown = ~np.asarray(known, dtype=bool)
    n = int(unknown.sum())
    if n == 0:
        return out.astype(np.float32)
    index = np.full(image.shape, -1, dtype=np.int64)
    index[unknown] = np.arange(n)
    pos = np.argwhere(unknown)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    rhs = np.zeros(n)
    for axis, h in enumerate(voxel_mm):
        w = 1.0 / float(h) ** 2
        for sign in (-1, 1):
            nb = pos.copy()
            nb[:, axis] += sign
            inside = (nb[:, axis] >= 0) & (nb[:, axis] < image.shape[axis])
            diag[inside] += w
            nbi = index[tuple(nb[inside].T)]
            src = np.flatnonzero(inside)
            free = nbi >= 0
            rows.append(src[free])
            cols.append(nbi[free])
            vals.append(np.full(int(free.sum()), -w))
            rhs[src[~free]] += w * out[tuple(nb[inside][~free].T)]
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    x0 = np.full(n, float(out[~unknown].mean()))
    sol, _ = cg(a, rhs, x0=x0, rtol=1e-10, maxiter=10 * n)
    out[unknown] = sol
    return out.astype(np.float32)


def region_dice(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, classes: Sequence[int]) -> dict[str, float]:
    """Dice of each class inside ``mask`` (NaN where the class is in neither map there).

    :func:`dataset.dice.per_class_dice` of the maps shifted by one inside the mask and 0 outside: background stays a
    class (class k is column k) and nothing outside the mask counts.
    """
    num_classes = int(max(pred.max(), target.max(), max(classes))) + 2
    shifted = [torch.from_numpy(np.where(mask, m.astype(np.int64) + 1, 0))[None, None] for m in (pred, target)]
    dice = per_class_dice(*shifted, num_classes)[0]
    return {str(k): float(dice[k]) for k in classes}


# ----------------------------------------------------------------------------------------------------- regions
def sphere_centres(body: np.ndarray, radius_mm: float, affine: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` seeded voxel centres (D, H, W) whose sphere of ``radius_mm`` lies inside ``body`` (fewer if none fit)."""
    depth = ndimage.distance_transform_edt(body, sampling=voxel_size_dhw(affine))
    cand = np.argwhere(depth > radius_mm)
    if not len(cand):
        return []
    rng = np.random.default_rng(seed)
    return [cand[i] for i in rng.choice(len(cand), size=min(n, len(cand)), replace=False)]


def sphere_mask(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float, affine: np.ndarray) -> np.ndarray:
    """(D, H, W) bool ball of ``radius_mm`` (world mm) around voxel ``centre``."""
    from diffusion.editing.geometry import world_coordinates

    aff = np.asarray(affine, dtype=np.float64)
    c = aff[:3, :3] @ np.asarray(centre, dtype=np.float64)[[1, 2, 0]] + aff[:3, 3]
    return np.linalg.norm(world_coordinates(shape, aff) - c, axis=-1) <= radius_mm  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------- experiment
def _composite(alpha: np.ndarray, fill: np.ndarray, image: np.ndarray) -> np.ndarray:
    return (alpha * fill + (1.0 - alpha) * image).astype(np.float32)


@dataclass
class Scored:
    """A checkpoint in the table: its report name (None: the only, unnamed one), model and sampling settings."""

    name: str | None
    path: Path
    model: Any
    settings: Any
    block: tuple[int, ...]
    info: dict
    resample: tuple[int, int] | None = None

    def key(self, method: str) -> str:
        """This checkpoint's method name in the report (``edit`` or ``edit:NAME``)."""
        return method if self.name is None else f"{method}:{self.name}"


def fidelity_case(
    scored: Sequence[Scored],
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    hidden: np.ndarray,
    margin_mm: float,
    seed: int,
    data_range: Sequence[float],
    pasted: Sequence[np.ndarray],
) -> dict:
    """One hidden region of one scan: each checkpoint's edit and pasted synthesis, the smoothed fill; fidelity,
    seams and each edit's preservation.

    Args:
        scored: the checkpoints.
        pasted: per checkpoint, the whole-volume synthesis for ``labels`` with this seed, in the file's units.
    """
    from diffusion.editing.inpaint import edit_scan
    from diffusion.editing.region import edit_region

    region = edit_region(hidden, margin_mm, affine)
    fills: dict[str, np.ndarray] = {}
    first = None
    kept = []
    for sc, synth in zip(scored, pasted):
        result = edit_scan(sc.model, image, labels, region, sc.settings, seed, sc.block, resample=sc.resample)
        first = result if first is None else first
        fills[sc.key("edit")] = result.image
        fills[sc.key("pasted")] = _composite(region.alpha, synth, image)
        kept.append(preservation(image, result.image, region.mask, region.band))
    fills["smoothed"] = _composite(region.alpha, smoothed_fill(image, ~region.mask, voxel_size_dhw(affine)), image)
    case = {
        "region_voxels": int(hidden.sum()),
        "windows_sampled": first.windows_sampled,  # type: ignore[union-attr]
        "windows_total": first.windows_total,  # type: ignore[union-attr]
        "seam_truth": boundary_seam_ratio(image, hidden),
        "preservation": {k: max(p[k] for p in kept) for k in ("max_abs_outside", "max_abs_band")},
    }
    for name, out in fills.items():
        case[name] = {**region_fidelity(out, image, hidden, data_range), "seam": boundary_seam_ratio(out, hidden)}
    return case


def _table(cases: list[dict], methods: Sequence[str]) -> dict:
    """Mean/std per region kind and method over all cases and seeds."""
    out: dict[str, dict] = {}
    for kind in sorted({c["region"] for c in cases}):
        sel = [c for c in cases if c["region"] == kind]
        out[kind] = {"n": len(sel), "seam_truth": summarise([c["seam_truth"] for c in sel if c["seam_truth"]])}
        for m in methods:
            out[kind][m] = {
                k: summarise([c[m][k] for c in sel if c[m][k] is not None and np.isfinite(c[m][k])])
                for k in ("ssim", "psnr", "mse", "seam")
            }
    return out


def markdown(report: dict) -> str:
    """The fidelity table (and adherence when measured) as Markdown."""
    lines = [
        "# Editing a real scan: in-region fidelity",
        "",
        f"Checkpoint(s) {', '.join(f'`{v}`' for v in report['checkpoints'].values())}; "
        f"{report['n_subjects']} held-out subject(s), seeds "
        f"{report['seeds']}, margin {report['margin_mm']} mm, sampler {report['sampler']}"
        f"{', RePaint resampling ' + str(report['resample']) if report.get('resample') else ''}. Mean ± std over "
        "subjects and seeds; SSIM/PSNR/MSE inside the hidden region on [0, 1] images; seam ratio at its boundary "
        "(1 = no step; the truth's own ratio in brackets).",
        "",
        "| region | n | method | SSIM ↑ | PSNR ↑ | MSE ↓ | seam (truth) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in report["table"].items():
        for m in report["methods"]:
            s = row[m]
            cell = " | ".join(f"{fmt(s[k]['mean'], k)} ± {fmt(s[k]['std'], k)}" for k in ("ssim", "psnr", "mse"))
            lines.append(
                f"| {kind} | {row['n']} | {m} | {cell} | {fmt(s['seam']['mean'])} ({fmt(row['seam_truth']['mean'])}) |"
            )
    if report.get("preservation"):
        p = report["preservation"]
        lines += [
            "",
            f"Preservation (every edit): max |output - input| outside the region = {p['max_abs_outside']:g} "
            f"(file units), inside the band = {p['max_abs_band']:.4g}.",
        ]
    if report.get("adherence"):
        a = report["adherence"]
        edited = [c for c in next(iter(a["dice"].values())) if c.startswith("edited")]
        cols = [f"edited scan{c[6:].replace(':', ' (') + ')' if ':' in c else ''} vs edited map" for c in edited]
        lines += [
            "",
            f"## Adherence ({a['edits']})",
            "",
            f"| class | {' | '.join(cols)} | unedited scan vs edited map | unedited scan vs its map |",
            "|---|" + "---|" * (len(cols) + 2),
        ]
        for k, row in a["dice"].items():
            cells = " | ".join(fmt(row[c]["mean"]) for c in edited)
            lines.append(f"| {k} | {cells} | {fmt(row['unedited']['mean'])} | {fmt(row['unedited_own']['mean'])} |")
    return "\n".join(lines) + "\n"


def _subjects(images: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    from dataset.nifti import strip_nifti_suffix

    out = []
    for lab in sorted(p for p in labels.iterdir() if p.name.endswith((".nii", ".nii.gz"))):
        stem = strip_nifti_suffix(lab.name)
        img = next((images / f"{stem}{s}" for s in (".nii.gz", ".nii") if (images / f"{stem}{s}").is_file()), None)
        if img is None:
            raise DataError(f"{lab}: no image {stem}.nii.gz in {images}")
        out.append((stem, img, lab))
    if not out:
        raise DataError(f"{labels}: no label maps")
    return out


def _segment(seg, image: np.ndarray, rng: Sequence[float], window: tuple[int, int, int]) -> np.ndarray:  # noqa: ANN001
    from evaluation.segmenter import predict

    lo, hi = rng
    x = torch.from_numpy(np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32))[None]
    return predict(seg, x, window)[0].numpy()


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """The experiment behind the CLI (see the module docstring)."""
    from dataset.cli import check_unique, pick_device, read_stage_checkpoint
    from dataset.files import check_output_files, read_run_record
    from diffusion.editing.labels import parse_edit
    from diffusion.module import load_checkpoint
    from evaluation.report import report_paths

    check_unique(args.seeds, "--seeds")
    check_unique(args.radii_mm, "--radii-mm")
    if args.data_range is not None and not args.data_range[0] < args.data_range[1]:
        raise ValueError(f"--data-range {args.data_range[0]:g} {args.data_range[1]:g}: LO must be below HI")
    json_path, md_path = report_paths(args.out)
    # --overwrite replaces a report of ours only (its JSON carries our producer mark), never someone else's file
    check_output_files([json_path, md_path], args.overwrite, ours=lambda _p: read_run_record(json_path) is not None)
    device = pick_device(args.device)
    named = parse_checkpoints(args.ckpt)
    subjects = _subjects(args.images, args.labels)
    for _, path in named:
        read_stage_checkpoint(path, "diffusion")
    scored = []
    for name, path in named:
        model = load_checkpoint(path, device, compile=False)
        info = model.hparams.get("data_info") or {}
        settings = model.sampler_defaults.resolve(None, args.steps, None)
        block = tuple(model.block_size or info.get("block_size"))
        resample = (args.jump_length, args.resample) if args.resample > 1 else None
        scored.append(Scored(name, path, model, settings, block, info, resample))
    nc = scored[0].model.label_nc
    if any(sc.model.label_nc != nc for sc in scored):
        raise DataError("the --ckpt checkpoints have different numbers of classes; compare models of one dataset")
    methods = method_names([sc.name for sc in scored])
    edits = [parse_edit(k, t, nc) for k in ("grow", "shrink") for t in getattr(args, k)]
    if args.structure is not None and not 0 <= args.structure < nc:
        raise ValueError(f"--structure {args.structure}: not a class 0..{nc - 1}")
    if args.segmenter is not None and not edits:
        raise ValueError("--segmenter measures adherence of label edits: give --grow/--shrink too")
    data_range = args.data_range or _recorded_range(args.images)
    cases, preserved, adherence = [], [], []
    for sid, img_path, lab_path in subjects:
        image, affine = load_image(img_path)
        labels, _ = load_label(lab_path, nc)
        body = labels > 0
        for seed in args.seeds:
            pasted = [_pasted(sc.model, image, labels, sc.settings, seed, sc.block, sc.info) for sc in scored]
            regions = []
            for r in args.radii_mm:
                for c in sphere_centres(body, r, affine, 1, seed * 1000 + int(r * 10)):
                    regions.append((f"sphere r={r:g} mm", sphere_mask(labels.shape, c, r, affine)))
            if args.structure is not None:
                grow = max(voxel_size_dhw(affine))
                from diffusion.editing.geometry import grow_mm

                regions.append(
                    (f"class {args.structure} grown {grow:.2g} mm", grow_mm(labels == args.structure, grow, affine))
                )
            for kind, hidden in regions:
                if not hidden.any():
                    continue
                case = fidelity_case(scored, image, labels, affine, hidden, args.margin_mm, seed, data_range, pasted)
                cases.append({"subject": sid, "seed": seed, "region": kind, **case})
                preserved.append(case["preservation"])
                ssim = ", ".join(f"{m} {case[m]['ssim']:.3f}" for m in methods)
                log.info("%s seed %d %s: SSIM %s", sid, seed, kind, ssim)
        if edits and args.segmenter is not None:
            adherence.append(_adherence(scored, args, image, labels, affine, edits, nc, sid))
    report = {
        **header("edit_metrics", argv),
        "checkpoint": str(scored[0].path),
        "checkpoints": {sc.name or "": str(sc.path) for sc in scored},
        "methods": methods,
        "n_subjects": len(subjects),
        "seeds": list(args.seeds),
        "margin_mm": args.margin_mm,
        "sampler": scored[0].settings.record(),
        "resample": {"jump_length": args.jump_length, "count": args.resample} if args.resample > 1 else None,
        "data_range": list(data_range),
        "cases": cases,
        "table": _table(cases, methods),
        "preservation": {k: max(p[k] for p in preserved) for k in ("max_abs_outside", "max_abs_band")}
        if preserved
        else None,
    }
    if adherence:
        classes = sorted({k for a in adherence for k in a})
        report["adherence"] = {
            "edits": ", ".join(f"{e.kind} {e.text}" for e in edits),
            "cases": adherence,
            "dice": {
                k: {
                    w: summarise([a[k][w] for a in adherence if k in a and np.isfinite(a[k][w])])
                    for w in [*(sc.key("edited") for sc in scored), "unedited", "unedited_own"]
                }
                for k in classes
            },
        }
    write_report(args.out, report, markdown(report))
    return report


def _recorded_range(images: Path) -> list[float]:
    from dataset.files import read_run_record

    rec = read_run_record(images / "generation.json") or {}
    if not rec.get("data_range"):
        raise DataError(f"{images}: no run record with the data range; pass --data-range LO HI")
    return [float(v) for v in rec["data_range"]]


def _pasted(model, image: np.ndarray, labels: np.ndarray, settings, seed: int, block, info: dict) -> np.ndarray:  # noqa: ANN001
    """The whole-volume stage-2 synthesis for ``labels`` (same seed), in the scan's units."""
    from dataset.intensity import invert_scan, normalize
    from diffusion.generation.geometry import pad_label, padded_shape

    _, record = normalize(image, info.get("intensity"), "scan")
    work = padded_shape(labels.shape, tuple(model.latent_factor), tuple(block))
    lab, crop = pad_label(torch.from_numpy(labels), work)
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    x = model.sample_images(lab[None].to(model.device), [gen], settings, train_window=tuple(block))
    return invert_scan(x[0, 0].float().cpu().numpy()[crop], info.get("intensity"), record).astype(np.float32)


def _adherence(scored, args, image, labels, affine, edits, nc, sid) -> dict:  # noqa: ANN001
    """Dice inside the edit region of each checkpoint's edited scan, and of the unedited scan (see the docstring)."""
    from diffusion.editing.inpaint import edit_scan
    from diffusion.editing.region import edit_region, label_difference
    from evaluation.segmenter import load_checkpoint

    seg, cfg, train_info = load_checkpoint(args.segmenter)
    rng = train_info.get("intensity", {}).get("real", {}).get("range")
    if not rng:
        raise DataError(f"{args.segmenter}: the segmenter records no intensity range")
    edited = labels
    for e in edits:
        edited = e.apply(edited, affine)
    changed = label_difference(labels, edited)
    if not changed.any():
        raise DataError(f"{sid}: the edits ({', '.join(e.text for e in edits)}) change no voxel at this voxel size")
    region = edit_region(changed, args.margin_mm, affine)
    window = tuple(cfg.patch_size) if cfg.patch_size else tuple(image.shape)
    classes = sorted({e.k for e in edits} | {int(v) for v in np.unique(edited[changed])})
    pred_orig = _segment(seg, image, rng, window)
    d_un = region_dice(pred_orig, edited, region.mask, classes)
    d_own = region_dice(pred_orig, labels, region.mask, classes)
    out = {k: {"unedited": d_un[k], "unedited_own": d_own[k]} for k in d_un}
    for sc in scored:
        result = edit_scan(
            sc.model, image, edited, region, sc.settings, args.seeds[0], sc.block, resample=sc.resample
        ).image
        d_edit = region_dice(_segment(seg, result, rng, window), edited, region.mask, classes)
        for k in out:
            out[k][sc.key("edited")] = d_edit[k]
    return out


def build_parser() -> argparse.ArgumentParser:
    """The options (numbers checked while parsing: ``dataset.cli``; one-line errors, exit status 2)."""
    from dataset.cli import ArgumentParser, finite_float, float_in, nonnegative_int, positive_int

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt",
        required=True,
        action="append",
        metavar="[NAME=]PATH",
        help="stage-2 checkpoint; repeat with names (NAME=PATH) to compare several in one table",
    )
    p.add_argument("--images", required=True, type=Path, help="held-out real images <id>.nii.gz")
    p.add_argument("--labels", required=True, type=Path, help="their label maps <id>.nii.gz")
    p.add_argument("--out", required=True, type=Path, help="JSON report (Markdown beside it)")
    p.add_argument(
        "--radii-mm", type=float_in(0, None, lo_open=True), nargs="*", default=[10.0, 16.0], help="hidden sphere radii"
    )
    p.add_argument("--structure", type=nonnegative_int, default=None, help="also hide this class's whole (grown) mask")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--margin-mm", type=float_in(0, None), default=0.0, help="edit margin around the hidden region")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--resample", type=positive_int, default=1, metavar="R", help="edits: RePaint resampling count")
    p.add_argument("--jump-length", type=positive_int, default=3, metavar="J", help="edits: resampling jump length")
    p.add_argument("--data-range", type=finite_float, nargs=2, default=None, help="LO HI of the images' units")
    p.add_argument("--segmenter", type=Path, default=None, help="real-trained segmenter for adherence")
    p.add_argument("--grow", action="append", default=[], metavar="K:MM", help="adherence edit (repeatable)")
    p.add_argument("--shrink", action="append", default=[], metavar="K:MM", help="adherence edit (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report of this tool")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    from dataset.cli import run_cli

    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
