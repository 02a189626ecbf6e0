"""Turn label maps into synthetic volumes with a trained Med-LSDM diffusion checkpoint.

    python scripts/generate.py --ckpt runs/diffusion/.../checkpoints/last.ckpt --labels LABELS --out OUT
    python -m scripts.generate --ckpt ... --labels split=test --out OUT --sampler ddim --steps 50 --num-samples 2

``--labels`` is a NIfTI file, a folder of them, a glob (quote it), or ``split=train|val|test`` of the dataset the
model was trained on. Each output ``OUT/<id>_s<k>.nii.gz`` has exactly its label map's shape and affine; intensities
are in the dataset's units where the normalisation is invertible (HU for CT), else in the model's [-1, 1] scale.
Label maps of any size work: volumes larger than the training block are sampled in overlapping windows that are
blended at every denoising step; smaller or odd-sized ones are padded and cropped back; label maps with another
voxel size are resampled to the training voxel size and back (unless ``--no-resample``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from dataset import DataError
from diffusion.generation.inputs import resolve_labels
from diffusion.generation.pipeline import PRECISIONS, GenerationSettings, LabelVolume, generate, load_label_volumes

log = logging.getLogger("generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="stage-2 (diffusion) Lightning checkpoint")
    p.add_argument("--labels", required=True, help="NIfTI file, folder, glob, or split=train|val|test")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--sampler",
        choices=("ddpm", "ddim", "rflow"),
        default=None,
        help="default: the checkpoint's (ddpm: ancestral, all T steps)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (ddim/rflow; default: the checkpoint's)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance w in u + w(c - u); 1 = conditional only (default: the checkpoint's)",
    )
    p.add_argument("--num-samples", type=int, default=1, help="volumes per label map (<id>_s0, <id>_s1, ...)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same volumes")
    p.add_argument("--batch-size", type=int, default=1, help="label maps of one shape sampled together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="32", help="autocast dtype while sampling")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the denoiser (default: off, whatever training used)"
    )
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap for volumes larger than a block")
    p.add_argument("--no-resample", action="store_true", help="sample on the input grid whatever its voxel size")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--png", action="store_true", help="also write a label | synthetic slice montage per volume")
    p.add_argument("--gif", action="store_true", help="also write a GIF scrolling through each volume")
    return p.parse_args(argv)


def load_model(ckpt: Path, device: torch.device, compile: bool = False) -> torch.nn.Module:
    """Load a diffusion checkpoint; a stage-1 or foreign checkpoint is refused before anything else happens.

    ``compile`` overrides the checkpoint's own ``compile`` hyperparameter: it is a choice of this run.
    """
    from diffusion.module import LatentDiffusionModule

    if not ckpt.is_file():
        raise DataError(f"{ckpt}: checkpoint not found")
    try:  # mmap: read the hyperparameters without pulling every tensor into memory
        meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise DataError(f"{ckpt}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    hparams = meta.get("hyper_parameters", {}) if isinstance(meta, dict) else {}
    if "first_stage_hparams" not in hparams:
        stage = "a stage-1 (VQ-GAN) checkpoint" if "n_codes" in hparams else "not a Med-LSDM diffusion checkpoint"
        raise DataError(f"{ckpt}: {stage}; generation needs the stage-2 checkpoint from train/train_diffusion.py")
    del meta
    model = LatentDiffusionModule.load_from_checkpoint(ckpt, map_location=device, weights_only=True, compile=compile)
    return model.eval().to(device)


def dataset_volumes(model: torch.nn.Module, split: str) -> list[LabelVolume]:
    """Label maps of a split of the dataset recorded in the checkpoint (``data_info.datamodule``)."""
    import hydra

    node = (model.hparams.get("data_info") or {}).get("datamodule")
    if not node:
        raise DataError("the checkpoint records no dataset configuration; pass label files instead of split=...")
    datamodule = hydra.utils.instantiate(node, _convert_="all")
    ds = datamodule.dataset(split)
    vols = []
    for i in range(len(ds)):
        s = ds[i]
        vols.append(LabelVolume(str(s["id"]), s["label"][0].numpy(), np.asarray(s["affine"]), f"{split}[{i}]"))
    return vols


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        settings = GenerationSettings(
            sampler=args.sampler, steps=args.steps, guidance=args.guidance, num_samples=args.num_samples,
            seed=args.seed, overlap=args.overlap, resample=not args.no_resample, precision=args.precision,
        )  # fmt: skip
        device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else "cpu"
            if args.device == "auto"
            else args.device
        )
        source = resolve_labels(args.labels)
        model = load_model(args.ckpt, device, compile=args.compile)
        if settings.sampler is not None and settings.sampler not in model.schedule.samplers:
            raise ValueError(f"--sampler {settings.sampler} does not fit this model; use {model.schedule.samplers}")
        volumes = (
            dataset_volumes(model, source.split) if source.split else load_label_volumes(source.files, model.label_nc)
        )
        log.info("%d label map(s), %d sample(s) each -> %s", len(volumes), settings.num_samples, args.out)
        hook = None
        if args.png or args.gif:
            from dataset.visualization import save_gif, save_montage

            def hook(vol: LabelVolume, k: int, image: np.ndarray, path: Path) -> None:
                img = torch.from_numpy(image)
                shown = (img - img.min()) / (img.max() - img.min() + 1e-8) * 2 - 1  # display scale only
                lab = torch.from_numpy(vol.label)
                stem = path.name[: -len(".nii.gz")]
                if args.png:
                    save_montage(
                        path.with_name(f"{stem}.png"),
                        [("label", lab), ("synthetic", shown)],
                        label_nc=model.label_nc,
                        overwrite=args.overwrite,
                    )
                if args.gif:
                    save_gif(path.with_name(f"{stem}.gif"), shown[None], label=lab[None], overwrite=args.overwrite)

        written = generate(
            model,
            volumes,
            args.out,
            settings,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=True,
            on_volume=hook,
            sidecar_suffixes=(".png",) * args.png + (".gif",) * args.gif,
        )
    except (DataError, FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info("wrote %d volume(s) to %s", len(written), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
