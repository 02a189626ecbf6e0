"""Turn label maps into synthetic volumes with a trained Med-LSDM diffusion checkpoint.

    python scripts/generate.py --ckpt runs/diffusion/.../checkpoints/last.ckpt --labels LABELS --out OUT
    python -m scripts.generate --ckpt ... --labels split=test --out OUT --sampler ddim --steps 50 --num-samples 2

``--labels`` is a NIfTI file, a folder of them, a glob (quote it), or ``split=train|val|test`` of the dataset the
model was trained on. Each output ``OUT/<id>_s<k>.nii.gz`` has exactly its label map's shape and affine; intensities
are in the dataset's units where the normalisation is invertible (HU for CT), else in the model's [-1, 1] scale.
Label maps of any size work: volumes larger than the training block are sampled in overlapping windows that are
blended at every denoising step; smaller or odd-sized ones are padded and cropped back; label maps with another
voxel size are resampled to the training voxel size and back (unless ``--no-resample``).

Every run leaves ``OUT/generation.json`` (checkpoint sha256, seed, sampler, steps, guidance, inputs, outputs);
``--overwrite`` replaces exactly the files that record lists. ``--export-real DIR`` (with ``split=...``) also writes
the split's real images as ``DIR/<id>.nii.gz`` and its label maps as ``DIR/labels/<id>.nii.gz``, the folders that
``evaluation/compute_metrics.py --real DIR --fake OUT --labels DIR/labels`` compares.

A model trained with a label table (sparse ids such as TotalSegmentator's, ``dataset.label_table``) speaks the
user's ids: label files are read through its table (a value outside it is refused in one line before any
sampling), the record holds the table, and montages name the classes. ``--export-real`` label maps are written in
the user's ids too, with the table in that folder's record: the evaluation tools read both folders through it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from dataset import DataError
from dataset.cli import ArgumentParser, float_in, pick_device, positive_int, read_stage_checkpoint, run_cli
from dataset.files import OutputFolder, check_distinct_folders, check_name, file_sha256, plan_outputs
from dataset.registry import label_table_of
from diffusion.generation.inputs import resolve_labels
from diffusion.generation.pipeline import (
    PRECISIONS,
    RECORD_NAME,
    GenerationSettings,
    LabelVolume,
    generate,
    load_label_volumes,
    load_model,
    output_files,
    sidecar_path,
)
from diffusion.sampling import WINDOW_MODES

log = logging.getLogger("generate")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/generate.py`` (numbers checked while parsing: ``dataset.cli``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="stage-2 (diffusion) Lightning checkpoint")
    p.add_argument("--labels", required=True, help="NIfTI file, folder, glob, or split=train|val|test")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--sampler",
        choices=("ddpm", "ddim", "rflow"),
        default=None,
        help="default: the checkpoint's (ddpm: ancestral, all T steps)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="sampler steps (ddim/rflow; default: the checkpoint's)"
    )
    p.add_argument(
        "--guidance",
        type=float_in(0, None),
        default=None,
        help="classifier-free guidance w in u + w(c - u); 1 = conditional only (default: the checkpoint's)",
    )
    p.add_argument("--num-samples", type=positive_int, default=1, help="volumes per label map (<id>_s0, <id>_s1, ...)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same volumes")
    p.add_argument("--batch-size", type=positive_int, default=1, help="label maps of one shape sampled together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="32", help="autocast dtype while sampling")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the denoiser (default: off, whatever training used)"
    )
    p.add_argument(
        "--overlap",
        type=float_in(0, 1, hi_open=True),
        default=0.5,
        help="window overlap along the axes that are tiled",
    )
    p.add_argument(
        "--window",
        choices=WINDOW_MODES,
        default="auto",
        help="auto: windows of the training depth spanning the whole plane; block: training-size windows",
    )
    p.add_argument("--no-resample", action="store_true", help="sample on the input grid whatever its voxel size")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of the previous run in --out")
    p.add_argument("--png", action="store_true", help="also write a label | synthetic slice montage per volume")
    p.add_argument("--gif", action="store_true", help="also write a GIF scrolling through each volume")
    p.add_argument("--data-root", default=None, help="split=...: the dataset folder, if it moved since training")
    p.add_argument(
        "--export-real",
        type=Path,
        default=None,
        help="split=...: also write the split's real images (DIR/<id>.nii.gz) and labels (DIR/labels/<id>.nii.gz)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def dataset_split(model: object, split: str, root: str | None = None) -> object:
    """The split of the dataset recorded in the checkpoint, built from the fixed table in ``dataset.registry``."""
    from dataset.registry import build_split

    info = model.hparams.get("data_info")  # type: ignore[attr-defined]
    if not info:
        raise DataError("the checkpoint records no dataset; pass label files instead of split=...")
    return build_split(info, split, root)


def dataset_volumes(ds: object, split: str) -> list[LabelVolume]:
    """Label maps of a dataset split; each id checked as a file name before it becomes one."""
    vols = []
    for i in range(len(ds)):  # type: ignore[arg-type]
        s = ds[i]  # type: ignore[index]
        vid = check_name(str(s["id"]), f"{split}[{i}] id")
        vols.append(LabelVolume(vid, s["label"][0].numpy(), np.asarray(s["affine"]), f"{split}[{i}]"))
    return vols


def command(args: argparse.Namespace, _argv: list[str]) -> None:
    """Validate every option and input, claim the output folder(s), then load, sample and write."""
    settings = GenerationSettings(
        sampler=args.sampler, steps=args.steps, guidance=args.guidance, num_samples=args.num_samples,
        seed=args.seed, overlap=args.overlap, resample=not args.no_resample, precision=args.precision,
        window=args.window,
    )  # fmt: skip
    device = pick_device(args.device)
    source = resolve_labels(args.labels)
    if args.export_real is not None and not source.split:
        raise DataError("--export-real needs --labels split=train|val|test")
    # one folder for both would make each run's files the other's stale ones
    check_distinct_folders({"--out": args.out, "--export-real": args.export_real})
    read_stage_checkpoint(args.ckpt, "diffusion")
    with contextlib.ExitStack() as claims:
        # every output folder is claimed (locked, checked) before the model is loaded or anything sampled
        claims.enter_context(OutputFolder(args.out, args.overwrite))
        if args.export_real is not None:
            claims.enter_context(OutputFolder(args.export_real, args.overwrite, what="--export-real"))
        model = load_model(args.ckpt, device, compile=args.compile)
        if settings.sampler is not None and settings.sampler not in model.schedule.samplers:
            raise ValueError(f"--sampler {settings.sampler} does not fit this model; use {model.schedule.samplers}")
        info = model.hparams.get("data_info") or {}
        table = label_table_of(info)  # files in the user's ids are read through it
        ds = dataset_split(model, source.split, args.data_root) if source.split else None
        volumes = (
            dataset_volumes(ds, source.split)
            if ds is not None
            else load_label_volumes(source.files, model.label_nc, table)
        )
        suffixes = (".png",) * args.png + (".gif",) * args.gif
        # both folders are checked before either is written: a refusal leaves nothing half-written
        plan_outputs(args.out, output_files(args.out, volumes, settings.num_samples, suffixes), args.overwrite,
                     RECORD_NAME)  # fmt: skip
        log.info("%d label map(s), %d sample(s) each -> %s", len(volumes), settings.num_samples, args.out)
        record = {
            "checkpoint": {"name": args.ckpt.name, "sha256": file_sha256(args.ckpt)},
            "labels": args.labels,
            **({"label_table": table.to_plain()} if table is not None else {}),
        }
        hook = None
        if args.png or args.gif:
            from dataset.visualization import display_window, save_gif, save_montage

            # one fixed window per modality (HU window for CT outputs), orientation from each label map's affine
            window = display_window(info.get("intensity"), "data")

            def hook(vol: LabelVolume, k: int, image: np.ndarray, path: Path) -> None:
                shown = torch.from_numpy(image)
                lab = torch.from_numpy(vol.label)
                if args.png:
                    save_montage(sidecar_path(path, ".png"), [("label", lab), ("synthetic", shown)],
                                 label_nc=model.label_nc, overwrite=args.overwrite, affine=vol.affine,
                                 window=window, class_names=info.get("class_names"))  # fmt: skip
                if args.gif:
                    save_gif(sidecar_path(path, ".gif"), shown[None], label=lab[None], overwrite=args.overwrite,
                             affine=vol.affine, window=window)  # fmt: skip

        if args.export_real is not None:
            from evaluation.export import export_split

            export_split(ds, source.split, args.export_real, args.export_real / "labels", info.get("intensity"),
                         args.overwrite, {"command": "export-real", **record}, table=table)  # fmt: skip
        written = generate(
            model,
            volumes,
            args.out,
            settings,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=True,
            on_volume=hook,
            sidecar_suffixes=suffixes,
            record=record,
        )
    log.info("wrote %d volume(s) to %s", len(written), args.out)


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
