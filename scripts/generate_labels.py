"""Generate new label maps with a trained label latent diffusion checkpoint (the ``labels`` stage).

    python scripts/generate_labels.py --ckpt runs/label_diffusion/.../checkpoints/last.ckpt --num-samples 8 \
        --out OUT --seed 0 [--condition grey_matter=650,white_matter=480] [--like MAP.nii.gz --strength 0.5] \
        [--repair] [--overwrite]

Each map is ``OUT/<id>.nii.gz`` (``map0000``, ``map0001``, ...; with ``--like MAP``: ``like-<MAP name>-0000``, ...),
integer dtype, on the training grid (``block_size``) at the training voxel size. Default affine (no ``--like``):
axis-aligned, the stored (I, J, K) axes are (H, W, D) with the training voxel size (the median over the training
maps, stored in the checkpoint), and the grid centre at world (0, 0, 0) mm; with ``--like`` the source map's
affine is kept. ``--condition NAME=VALUE,...`` fixes attributes (``<class>`` = its volume in mL,
``<class>.centroid_d|h|w`` = its centroid in [-1, 1] where the model was trained with centroids); the others are
left free (none given: unconditional). ``--condition-from DIR [--condition-keys a,b]`` asks map i for the attributes
measured on the i-th label map of DIR (cycled): new maps with the volumes of real subjects, and the requested vs
achieved check of the control. ``--like MAP --strength s`` noises MAP's latent to the fraction ``s`` of the
noise schedule and denoises it with the given attributes ("this patient, with larger ventricles"): small ``s`` stays
close to MAP, ``s = 1`` ignores it. ``--repair`` keeps the largest connected component of every foreground class
(removed voxels take the nearest remaining label) and fills background holes enclosed by a class; it is off by
default and must stay off when the generator itself is evaluated (the record says whether it ran).

A model trained with a label table (sparse ids such as TotalSegmentator's, ``dataset.label_table``) speaks the
user's ids: ``--like`` and ``--condition-from`` maps are read through its table (a value outside it is refused in
one line before any sampling) and the maps are written back in the original ids (a class several ids were merged
into: its smallest id), with the table in the run record.

``OUT/labels_run.json`` is the run record: checkpoint and its sha256, seed, settings, and per map the requested and
achieved attributes (achieved = measured on the written map). ``--overwrite`` replaces exactly the files the
previous run record lists; a file of the same name that no record of ours lists is never replaced. Maps are written
to a staging folder inside ``OUT`` first and moved into place only when all of them are done.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import DataError
from dataset.cli import ArgumentParser, float_in, one_line, pick_device, positive_int, read_stage_checkpoint, run_cli
from dataset.files import OutputFolder, check_name, file_sha256, write_run_record
from dataset.label_table import load_class_ids, restore_labels
from dataset.nifti import save_nifti, strip_nifti_suffix, voxel_size_dhw
from dataset.registry import label_table_of

log = logging.getLogger("generate_labels")

RECORD = "labels_run.json"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/generate_labels.py`` (numbers checked while parsing: ``dataset.cli``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="label diffusion checkpoint (train_label_diffusion.py)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="number of maps to generate")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="same seed, same maps")
    p.add_argument("--condition", default="", help="attributes NAME=VALUE,... (class volume in mL; see above)")
    p.add_argument(
        "--condition-from",
        type=Path,
        default=None,
        help="folder of label maps: map i requests the attributes measured on the i-th of them (cycled)",
    )
    p.add_argument(
        "--condition-keys", default="", help="with --condition-from: only these attributes NAME,... (default all)"
    )
    p.add_argument("--like", type=Path, default=None, help="a label map (NIfTI) to make variations of")
    p.add_argument(
        "--strength",
        type=float_in(0, 1, lo_open=True),
        default=0.5,
        help="with --like: noise level in (0, 1] to start from",
    )
    p.add_argument("--repair", action="store_true", help="largest component per class + hole filling (reported)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "rflow"), default=None, help="default: the checkpoint's")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument(
        "--guidance", type=float_in(0, None), default=None, help="guidance w in u + w(c - u) (default: checkpoint's)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace the maps of a previous run in --out")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def parse_condition(text: str) -> dict[str, float]:
    """``"a=1.5,b=2"`` -> ``{"a": 1.5, "b": 2.0}`` (names checked against the model later).

    Raises:
        ValueError: an entry without ``=``, a repeated name or a value that is not a finite number.
    """
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--condition entry {item!r} must be NAME=VALUE")
        if name in out:
            raise ValueError(f"--condition names {name!r} twice")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--condition {name}={value!r}: not a number") from None
        if not np.isfinite(number):
            raise ValueError(f"--condition {name}={value!r}: not a finite number")
        out[name] = number
    return out


def load_label_model(ckpt: Path, device: torch.device) -> torch.nn.Module:
    """Load a label diffusion checkpoint; anything else is refused with one line before any work."""
    from diffusion.label_diffusion import LabelLatentDiffusion

    read_stage_checkpoint(ckpt, "label_diffusion")
    try:
        model = LabelLatentDiffusion.load_from_checkpoint(ckpt, map_location=device, weights_only=True)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as err:
        # a hand-made or truncated checkpoint of the right stage: missing or misshapen weights or settings
        raise DataError(f"--ckpt {ckpt}: not a usable label diffusion checkpoint ({one_line(err)[:300]})") from None
    return model.eval().to(device)


def requests_from_maps(model: torch.nn.Module, folder: Path, keys: str, n: int) -> list[dict[str, float]]:
    """Per generated map, the attributes measured on the real maps of ``folder`` (sorted by name, cycled).

    Raises:
        DataError / ValueError: no map in the folder, a bad map, or an unknown attribute in ``keys``.
    """
    from dataset.nifti import NIFTI_SUFFIXES

    if not Path(folder).is_dir():
        raise DataError(f"--condition-from {folder}: not a folder of label maps")
    files = sorted(p for p in Path(folder).iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise DataError(f"--condition-from {folder}: no NIfTI label map there")
    names = [k.strip() for k in keys.split(",") if k.strip()] or list(model.attribute_names)
    model.condition(dict.fromkeys(names, 0.0))  # validates the names
    measured = []
    for path in files:
        label, affine = load_class_ids(path, model.label_nc, label_table_of(model.hparams.get("data_info")))
        lab = torch.from_numpy(label.astype(np.int64))[None, None]
        attrs = model.attributes_of(lab, torch.from_numpy(affine)[None])[0]
        measured.append({k: float(attrs[model.attribute_names.index(k)]) for k in names})
    return [measured[i % len(measured)] for i in range(n)]


def default_affine(voxel_dhw: tuple[float, float, float], shape_dhw: tuple[int, int, int]) -> np.ndarray:
    """Axis-aligned (I, J, K) = (H, W, D) affine with the given voxel size and the grid centre at world 0 mm."""
    vd, vh, vw = voxel_dhw
    d, h, w = shape_dhw
    affine = np.diag([vh, vw, vd, 1.0])
    affine[:3, 3] = [-(h - 1) / 2 * vh, -(w - 1) / 2 * vw, -(d - 1) / 2 * vd]
    return affine


def repair(label: np.ndarray, label_nc: int) -> tuple[np.ndarray, int]:
    """Largest connected component per foreground class, then background holes filled; (map, changed voxels).

    Voxels of removed components take the label of the nearest voxel that stays (Euclidean distance transform);
    a hole is background (0) enclosed by one class in 3D and takes that class. Non-background voxels enclosed by a
    class (nested structures) are left alone.
    """
    from scipy import ndimage

    out = label.copy()
    removed = np.zeros(label.shape, dtype=bool)
    for c in range(1, label_nc):
        comps, n = ndimage.label(out == c)
        if n > 1:
            sizes = np.bincount(comps.ravel())[1:]
            removed |= (comps > 0) & (comps != int(np.argmax(sizes)) + 1)
    if removed.any():
        _, idx = ndimage.distance_transform_edt(removed, return_indices=True)
        out[removed] = out[tuple(i[removed] for i in idx)]
    for c in range(1, label_nc):
        holes = ndimage.binary_fill_holes(out == c) & (out == 0)
        out[holes] = c
    return out, int((out != label).sum())


def map_seed(seed: int, index: int) -> int:
    """Seed of map ``index``: independent of how many maps are generated (crc32, stable across runs)."""
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF


def command(args: argparse.Namespace, argv: list[str]) -> None:
    """Validate every option and input, claim ``--out``, sample every map into staging, then move them in."""
    if args.like is None and args.strength != 0.5:
        raise ValueError("--strength needs --like MAP")
    requested = parse_condition(args.condition)
    if any(v < 0 for k, v in requested.items() if ".centroid_" not in k):
        raise ValueError("--condition: a volume cannot be negative")
    device = pick_device(args.device)
    if args.condition_from is not None and requested:
        raise ValueError("give either --condition or --condition-from, not both")
    if args.condition_keys and args.condition_from is None:
        raise ValueError("--condition-keys needs --condition-from DIR")
    model = load_label_model(args.ckpt, device)
    table = label_table_of(model.hparams.get("data_info"))
    if table is not None:
        table.source_values()  # every class can be written back, checked before any sampling
    model.condition(requested)  # validates the names
    requests = [requested] * args.num_samples
    if args.condition_from is not None:
        requests = requests_from_maps(model, args.condition_from, args.condition_keys, args.num_samples)
    if args.sampler is not None and args.sampler not in model.schedule.samplers:
        raise ValueError(f"--sampler {args.sampler} does not fit this model; use {model.schedule.samplers}")
    shape = model.block_size
    like = None
    if args.like is not None:
        like_map, affine = load_class_ids(args.like, model.label_nc, table)
        if tuple(like_map.shape) != shape:
            raise DataError(f"{args.like}: shape {tuple(like_map.shape)} (D, H, W) differs from the training grid "
                            f"{shape}; crop or resample it to the training block first")  # fmt: skip
        trained = tuple(float(v) for v in model.voxel_size_dhw)
        if not np.allclose(voxel_size_dhw(affine), trained, rtol=0.01):
            raise DataError(f"{args.like}: voxel size {voxel_size_dhw(affine)} mm differs from the training "
                            f"voxel size {trained} mm")  # fmt: skip
        like = torch.from_numpy(like_map.astype(np.int64))[None, None]
        prefix = f"like-{check_name(strip_nifti_suffix(args.like.name), '--like file name')}-"
    else:
        affine = default_affine(tuple(float(v) for v in model.voxel_size_dhw), shape)
        prefix = "map"
    ids = [check_name(f"{prefix}{i:04d}", "map id") for i in range(args.num_samples)]
    names = [f"{i}.nii.gz" for i in ids]
    sha = file_sha256(args.ckpt)
    with OutputFolder(args.out, args.overwrite) as claimed:
        out = claimed.path
        plan = claimed.plan(names, RECORD, tool="generate_labels")
        staging = claimed.staging("labels")
        affine_t = torch.from_numpy(affine)[None]
        maps = []
        for i, (vid, name) in enumerate(tqdm(list(zip(ids, names)), desc="label maps", unit="map", disable=None)):
            gen = torch.Generator(device=device).manual_seed(map_seed(args.seed, i))
            values, mask = model.condition(requests[i])
            label = model.sample_labels(
                values, mask, sampler=args.sampler, steps=args.steps, guidance=args.guidance, generator=gen,
                like=like, strength=args.strength if like is not None else 1.0,
            ).cpu()  # fmt: skip
            array = label[0, 0].numpy().astype(np.int16)
            changed = 0
            if args.repair:
                array, changed = repair(array, model.label_nc)
            achieved = model.attributes_of(torch.from_numpy(array.astype(np.int64))[None, None], affine_t)[0]
            written = array if table is None else restore_labels(array, table)  # the user's ids
            dtype = np.int16 if int(written.max(initial=0)) <= np.iinfo(np.int16).max else np.int32
            save_nifti(staging / name, written, affine, dtype=dtype)
            maps.append({
                "id": vid, "file": name, "seed": map_seed(args.seed, i),
                "requested": dict(requests[i]),
                "achieved": dict(zip(model.attribute_names, (float(v) for v in achieved))),
                **({"repair_changed_voxels": changed} if args.repair else {}),
            })  # fmt: skip

        # all maps are done: remove what the previous run wrote, move the new maps in, then the record
        plan.remove_stale()
        for name in names:
            (staging / name).replace(out / name)
        record = {
            "tool": "generate_labels",
            "argv": list(argv),
            "checkpoint": str(args.ckpt),
            "checkpoint_sha256": sha,
            "seed": args.seed,
            "settings": {
                "sampler": args.sampler or model.hparams.sampler,
                "steps": args.steps or model.hparams.sample_steps,
                "guidance": model.hparams.guidance if args.guidance is None else args.guidance,
                "like": str(args.like) if args.like else None,
                "condition_from": str(args.condition_from) if args.condition_from else None,
                "like_sha256": file_sha256(args.like) if args.like else None,
                "strength": args.strength if args.like else None,
                "repair": bool(args.repair),
            },
            "class_names": model.class_names,
            "label_table": table.to_plain() if table is not None else None,
            "attribute_names": model.attribute_names,
            "attribute_units": {
                n: ("[-1, 1] of the grid" if ".centroid_" in n else "mL") for n in model.attribute_names
            },
            "voxel_size_dhw_mm": [float(v) for v in model.voxel_size_dhw],
            "affine": np.asarray(affine).tolist(),
            "maps": maps,
            "outputs": names,
        }
        write_run_record(out / RECORD, record)
    log.info("wrote %d label map(s) to %s", len(ids), out)


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
