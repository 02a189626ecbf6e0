"""Edit a real scan: change its label map (or name a region) and get the scan back with the change, the rest untouched.

    python scripts/edit.py --ckpt STAGE2.ckpt --image SCAN.nii.gz --labels LABELS.nii.gz --edited EDITED.nii.gz \
        --out DIR
    python scripts/edit.py --ckpt ... --image ... --labels ... --grow 1:2 --shrink 3:1 --out DIR
    python scripts/edit.py --ckpt ... --image ... --labels ... --insert 4:12.5,-30,8:10:3 --out DIR
    python scripts/edit.py --ckpt ... --image ... --labels ... --region MASK.nii.gz --out DIR

The edit region is where the edited map differs from ``--labels`` (plus ``--region`` when given), grown by
``--margin-mm`` (world millimetres, whatever the voxel size and orientation). It is regenerated on the stage-2 model's
one sampling path with the real scan's noised latent imposed outside it at every step (RePaint-style; with
``--resample R`` each block of ``--jump-length`` steps is run R times, forward-noised back in between, at R times the
cost), decoded with the edited map and composited over a feathered band: outside the region the output holds the
input file's stored voxels bit for bit (same dtype and scaling: HU untouched). Only the windows around the region are
computed.

Label edits in mm (repeatable, applied in the order grow, shrink, replace, insert; ``--within MASK`` limits grow,
shrink and replace to a region): ``--grow K:MM``, ``--shrink K:MM``, ``--replace A:B``,
``--insert K:X,Y,Z:R`` (sphere) or ``K:X,Y,Z:RX,RY,RZ`` (ellipsoid; world mm), optionally ``:P1,P2`` to clip it to
parent classes. Classes are the checkpoint's class ids, or the user's ids when it carries a label table.

A model trained with a label table (sparse ids such as TotalSegmentator's, ``dataset.label_table``) speaks the
user's ids: ``--labels`` and ``--edited`` are read through its table (a value outside it is refused in one line
naming the file and the value, before any sampling), the classes of the edit options are the user's ids, and
``edited_labels.nii.gz`` is written back in them (a class several ids were merged into: its smallest id), with the
table in the run record.

DIR receives ``edited.nii.gz`` (on the input's grid, in its units and dtype), ``region.nii.gz`` (1 regenerated,
2 feathered band), ``edited_labels.nii.gz`` (the edited map, when made by the options above), ``montage.png``
with ``--png`` (original | edited | |difference| | label change) and the run record ``generation.json``
(checkpoint sha256, inputs, region size, settings). Every option and input is checked before DIR is claimed
(``dataset.files.OutputFolder``: a lock for the run, a link refused, never written or deleted through); the files
are finished in a staging folder and moved in together; ``--overwrite`` replaces exactly the files the previous
record lists, and a same-named file that no record of ours lists is never replaced.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from dataset import DataError
from dataset.cli import ArgumentParser, float_in, pick_device, positive_int, read_stage_checkpoint, run_cli
from dataset.files import OutputFolder, file_sha256, write_run_record
from dataset.label_table import LabelTable, load_class_ids, restore_labels
from dataset.nifti import check_same_geometry, load_label, read_stored, save_nifti, save_stored, voxel_size_dhw
from diffusion.editing.labels import LabelEdit, parse_edit
from diffusion.editing.region import edit_region, label_difference
from diffusion.generation.pipeline import RECORD_NAME
from diffusion.sampling import WINDOW_MODES

log = logging.getLogger("edit")
EDIT_KINDS = ("grow", "shrink", "replace", "insert")
TOOL = "edit"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/edit.py`` (numbers checked while parsing: ``dataset.cli``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="stage-2 (diffusion) checkpoint")
    p.add_argument("--image", required=True, type=Path, help="the real scan (NIfTI)")
    p.add_argument("--labels", required=True, type=Path, help="its label map (NIfTI, same grid)")
    p.add_argument("--edited", type=Path, default=None, help="the edited label map (NIfTI, same grid)")
    p.add_argument("--region", type=Path, default=None, help="a mask (NIfTI, same grid) to regenerate as well")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    for kind, metavar, what in [
        ("grow", "K:MM", "grow class K by MM mm"),
        ("shrink", "K:MM", "shrink class K"),
        ("replace", "A:B", "replace class A by B"),
        ("insert", "K:X,Y,Z:R[:PARENTS]", "sphere/ellipsoid of class K at a world point"),
    ]:
        p.add_argument(f"--{kind}", action="append", default=[], metavar=metavar, help=what + " (repeatable)")
    p.add_argument("--within", type=Path, default=None, help="mask (NIfTI) limiting --grow/--shrink/--replace")
    p.add_argument(
        "--margin-mm", type=float_in(0, None), default=3.0, help="region margin around the change, in mm (>= 0)"
    )
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "rflow"), default=None, help="default: the checkpoint's")
    p.add_argument("--guidance", type=float_in(0, None), default=None, help="guidance w (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same output")
    p.add_argument(
        "--resample",
        type=positive_int,
        default=1,
        metavar="R",
        help="RePaint resampling: run each block of --jump-length steps R times, forward-noising back in between "
        "(R times the cost; 1: off)",
    )
    p.add_argument("--jump-length", type=positive_int, default=3, metavar="J", help="steps per resampled block")
    p.add_argument("--window", choices=WINDOW_MODES, default="auto", help="denoising windows, as generate.py")
    p.add_argument(
        "--overlap", type=float_in(0, 1, hi_open=True), default=0.5, help="window overlap along tiled axes, in [0, 1)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of the previous run in --out")
    p.add_argument("--png", action="store_true", help="also write montage.png")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def _same_grid(ref: Path, shape: tuple[int, ...], affine: np.ndarray, other: Path, what: str) -> None:
    try:
        from dataset.nifti import load_header

        hdr = load_header(other)
        check_same_geometry(ref, shape, affine, other, tuple(hdr.shape[:3]), hdr.affine)
    except DataError as err:
        raise DataError(f"{what}: {err}") from None


def _read_mask(path: Path, image: Path, shape: tuple[int, ...], affine: np.ndarray, what: str) -> np.ndarray:
    _same_grid(image, shape, affine, path, what)
    mask, _ = load_label(path)
    if mask.min() < 0:
        raise DataError(f"{path}: {what} holds negative values; a mask is 0 outside, > 0 inside")
    return mask > 0


def _apply_edits(
    label: np.ndarray, affine: np.ndarray, edits: list[LabelEdit], within: np.ndarray | None
) -> np.ndarray:
    """The label edits in order; ``within`` limits all but inserts (which have their own parents)."""
    out = label
    for edit in edits:
        out = edit.apply(out, affine, within if edit.kind != "insert" else None)
    return out


def _check_options(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The label edit options as ``(kind, text)``; combinations that cannot make one edit are refused."""
    ops = [(kind, text) for kind in EDIT_KINDS for text in getattr(args, kind)]
    if args.edited is not None and ops:
        raise ValueError("give either --edited or edit options (--grow/--shrink/--replace/--insert), not both")
    if args.edited is None and not ops and args.region is None:
        raise ValueError("nothing to edit: give --edited, an edit option, or --region")
    if args.within is not None and not any(k != "insert" for k, _ in ops):
        raise ValueError("--within limits --grow/--shrink/--replace; none was given")
    for option, path in (("--ckpt", args.ckpt), ("--image", args.image), ("--labels", args.labels),
                         ("--edited", args.edited), ("--region", args.region), ("--within", args.within)):  # fmt: skip
        if path is not None and not path.is_file():
            raise DataError(f"{option} {path}: file not found")
    return ops


def command(args: argparse.Namespace, argv: list[str]) -> None:
    """Validate every option and input, claim ``--out``, sample the region, write into staging, move in, record."""
    ops = _check_options(args)
    device = pick_device(args.device)
    read_stage_checkpoint(args.ckpt, "diffusion")
    from diffusion.generation.pipeline import load_model

    # every input is read and checked before the folder is claimed and before the model samples anything
    scan = read_stored(args.image)
    grid = _ijk(scan.stored.shape)
    model = load_model(args.ckpt, device)
    if args.sampler is not None and args.sampler not in model.schedule.samplers:
        raise ValueError(f"--sampler {args.sampler} does not fit this model; use {model.schedule.samplers}")
    from dataset.registry import label_table_of

    info = model.hparams.get("data_info") or {}
    table = label_table_of(info)  # the user's ids: maps and edit options are read through it
    if table is not None and ops:
        table.source_values()  # the edited map is written back: every class needs an id, checked before sampling
    nc = model.label_nc
    edits = [parse_edit(kind, text, None if table else nc) for kind, text in ops]
    if table is not None:
        edits = [_to_class_ids(e, table) for e in edits]
    _same_grid(args.image, grid, scan.affine, args.labels, "--labels")
    labels, _ = load_class_ids(args.labels, nc, table)
    if args.edited is not None:
        _same_grid(args.image, grid, scan.affine, args.edited, "--edited")
        edited, _ = load_class_ids(args.edited, nc, table)
    else:
        within = _read_mask(args.within, args.image, grid, scan.affine, "--within") if args.within else None
        edited = _apply_edits(labels, scan.affine, edits, within)
    changed = label_difference(labels, edited)
    if args.region is not None:
        extra = _read_mask(args.region, args.image, grid, scan.affine, "--region")
        if not extra.any():
            raise DataError(f"{args.region}: the region is empty (no voxel > 0 inside the volume)")
        changed |= extra
    if not changed.any():
        what = "the edit options change" if ops else "--edited differs from --labels in"
        raise DataError(f"empty edit: {what} no voxel (and no --region was given)")
    region = edit_region(changed, args.margin_mm, scan.affine)
    block = tuple(model.block_size) if model.block_size is not None else tuple(info.get("block_size") or ())
    if len(block) != 3:
        raise DataError("the checkpoint records no training block size; cannot tile the edit")
    settings = model.sampler_defaults.resolve(args.sampler, args.steps, args.guidance)
    from dataset.intensity import normalize

    normalize(scan.values, info.get("intensity"), str(args.image))  # units the model cannot read: refused here
    voxel = info.get("voxel_size")
    if voxel and not np.allclose(voxel_size_dhw(scan.affine), voxel, rtol=1e-3):
        log.warning(
            "the scan's voxel size %s mm differs from the training %s mm; editing on the scan's grid",
            tuple(round(v, 3) for v in voxel_size_dhw(scan.affine)),
            tuple(voxel),
        )
    names = ["edited.nii.gz", "region.nii.gz"] + ["edited_labels.nii.gz"] * bool(ops) + ["montage.png"] * args.png
    sha = file_sha256(args.ckpt)

    from diffusion.editing.inpaint import composite_stored, edit_scan, voxel_volume_mm3

    with OutputFolder(args.out, args.overwrite) as claimed:
        # a link, a foreign record or an unrecorded file in the way is refused here, before any sampling
        plan = claimed.plan(names, RECORD_NAME, tool=TOOL)
        result = edit_scan(
            model,
            scan.values,
            edited,
            region,
            settings,
            args.seed,
            block,
            window_mode=args.window,
            overlap=args.overlap,
            progress=True,
            resample=(args.jump_length, args.resample) if args.resample > 1 else None,
        )
        # every file is finished in a staging folder first, then moved in: a killed run leaves the old set whole
        staging = claimed.staging("edit")
        save_stored(staging / "edited.nii.gz", composite_stored(scan, result.image, region.mask), scan)
        mask = region.core.astype(np.uint8) + 2 * region.band.astype(np.uint8)
        save_nifti(staging / "region.nii.gz", mask, scan.affine)
        if ops:
            written = edited if table is None else restore_labels(edited, table)  # the user's ids
            save_nifti(staging / "edited_labels.nii.gz", written, scan.affine)  # smallest integer type holding it
        if args.png:
            save_edit_montage(
                staging / "montage.png", scan.values, result.image, labels, edited, scan.affine, info, nc,
                False, region.mask,
            )  # fmt: skip
        plan.remove_stale()
        for name in names:
            (staging / name).replace(claimed.path / name)
        write_run_record(
            claimed.path / RECORD_NAME,
            {
                "command": TOOL,
                "argv": list(argv),
                "checkpoint": {"name": args.ckpt.name, "sha256": sha},
                "inputs": {
                    k: str(v)
                    for k, v in (
                        ("image", args.image),
                        ("labels", args.labels),
                        ("edited", args.edited),
                        ("region", args.region),
                        ("within", args.within),
                    )
                    if v is not None
                },
                "label_edits": [{"kind": e.kind, "text": e.text} for e in edits],
                **({"label_table": table.to_plain()} if table is not None else {}),
                "region": region.record(voxel_volume_mm3(scan.affine)),
                **result.settings,
                "stored_dtype": str(scan.stored.dtype),
                "scaling": {"slope": scan.slope, "inter": scan.inter},
                "outputs": names,
            },
        )
    log.info("edited %d voxel(s) (%d in the band) -> %s", int(region.mask.sum()), int(region.band.sum()), args.out)


def _ijk(shape_dhw: tuple[int, ...]) -> tuple[int, int, int]:
    d, h, w = shape_dhw
    return (h, w, d)


def _to_class_ids(edit: LabelEdit, table: LabelTable) -> LabelEdit:
    from dataclasses import replace

    def cid(v: int) -> int:
        if v not in table.remap:
            raise ValueError(f"--{edit.kind} {edit.text}: id {v} is not in the checkpoint's label table")
        return int(table.remap[v])

    parent = tuple(cid(p) for p in edit.parent) if edit.parent is not None else None
    return replace(edit, k=cid(edit.k), b=cid(edit.b) if edit.kind == "replace" else edit.b, parent=parent)


def save_edit_montage(
    path: Path,
    original: np.ndarray,
    edited_image: np.ndarray,
    labels: np.ndarray,
    edited: np.ndarray,
    affine: np.ndarray,
    info: dict,
    label_nc: int,
    overwrite: bool,
    region: np.ndarray | None = None,
) -> Path:
    """original | edited | |difference| | label change (the edited class where the map changed, else 0).

    With ``region`` (D, H, W) bool the slices are taken across the region's depth (and two slices either side),
    so the montage shows the edit, not evenly spaced slices of the whole volume.
    """
    from dataset.nifti import shift_affine
    from dataset.visualization import display_window, save_montage

    if region is not None and region.any():
        idx = np.flatnonzero(region.any(axis=(1, 2)))
        d0, d1 = max(0, int(idx[0]) - 2), min(region.shape[0], int(idx[-1]) + 3)
        original, edited_image, labels, edited = (a[d0:d1] for a in (original, edited_image, labels, edited))
        affine = shift_affine(affine, (d0, 0, 0))

    intensity = info.get("intensity")
    if intensity is not None and intensity.get("kind") == "ct_window":
        lo, hi = display_window(intensity, "data")
    else:  # the file's own units: its robust range
        lo, hi = (float(v) for v in np.percentile(original, [0.5, 99.5]))
    diff = np.abs(edited_image.astype(np.float32) - original.astype(np.float32))
    scale = float(diff.max()) or 1.0
    shown = (lo + (hi - lo) * diff / scale).astype(np.float32)  # |difference| stretched to the window (max = white)
    change = np.where(labels != edited, edited, 0).astype(np.int64)
    rows = [
        ("original", original.astype(np.float32)),
        ("edited", edited_image.astype(np.float32)),
        ("|difference|", shown),
        ("label change", change),
    ]
    return save_montage(
        path,
        rows,
        label_nc=label_nc,
        overwrite=overwrite,
        affine=affine,
        window=(lo, hi),
        class_names=info.get("class_names"),
        reorder=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
