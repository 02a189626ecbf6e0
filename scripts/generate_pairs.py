"""New (image, label) pairs from two checkpoints: new label maps, then an image for each.

    python scripts/generate_pairs.py --label-ckpt runs/label_diffusion/.../last.ckpt \
        --image-ckpt runs/diffusion/.../last.ckpt --num-samples 8 --out OUT [--seed 0] \
        [--condition grey_matter=650 | --condition-from REAL_LABELS] [--repair] [--overwrite]

Runs ``scripts/generate_labels.py`` into ``OUT/labels`` (``<id>.nii.gz`` plus its run record), then
``scripts/generate.py`` on that folder into ``OUT/images`` (``<id>_s0.nii.gz``, the same ids), in this process.
Each half keeps its own run record and its own ``--overwrite`` rule; a user error in either prints one line and
exits 2. The image checkpoint must be trained on the same classes (``label_nc``, and the same label table when the
data had sparse ids: the maps are written, and read again, in the user's ids) and block size as the label one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dataset import DataError
from dataset.files import read_checkpoint
from dataset.registry import label_table_of

log = logging.getLogger("generate_pairs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label-ckpt", required=True, type=Path, help="label diffusion checkpoint")
    p.add_argument("--image-ckpt", required=True, type=Path, help="stage-2 (image diffusion) checkpoint")
    p.add_argument("--num-samples", type=int, default=1, help="number of pairs")
    p.add_argument("--out", required=True, type=Path, help="output folder (labels/ and images/ inside)")
    p.add_argument("--seed", type=int, default=0, help="seed of both halves")
    p.add_argument("--condition", default="", help="label attributes NAME=VALUE,... (see generate_labels.py)")
    p.add_argument("--condition-from", type=Path, default=None, help="label maps whose attributes map i asks for")
    p.add_argument("--repair", action="store_true", help="topology repair of the label maps (reported)")
    p.add_argument("--label-steps", type=int, default=None, help="label sampler steps (default: checkpoint's)")
    p.add_argument("--image-steps", type=int, default=None, help="image sampler steps (default: checkpoint's)")
    p.add_argument("--batch-size", type=int, default=1, help="images sampled together")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of a previous run in --out")
    return p.parse_args(argv)


def check_compatible(label_ckpt: Path, image_ckpt: Path) -> None:
    """Refuse (one line) two checkpoints whose classes or block sizes differ, before any sampling."""
    hps = []
    for path in (label_ckpt, image_ckpt):
        meta = read_checkpoint(path)
        hps.append(meta.get("hyper_parameters", {}) if isinstance(meta, dict) else {})
    lab, img = hps
    if "label_ae_hparams" not in lab:
        raise DataError(f"{label_ckpt}: not a label diffusion checkpoint (--label-ckpt)")
    if "first_stage_hparams" not in img:
        raise DataError(f"{image_ckpt}: not a stage-2 image diffusion checkpoint (--image-ckpt)")
    if int(lab["label_nc"]) != int(img["label_nc"]):
        raise DataError(f"the label model has {lab['label_nc']} classes, the image model {img['label_nc']}")
    # the label maps travel in the user's ids: both models must read them through the same table
    tables = [label_table_of(hp.get("data_info")) for hp in hps]
    if [t.remap if t else None for t in tables] != [t.remap if t else None for t in reversed(tables)]:
        raise DataError(
            f"the label model's label table ({tables[0].name if tables[0] else 'none'}) differs from the image "
            f"model's ({tables[1].name if tables[1] else 'none'}): train both on one dataset config"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from scripts import generate, generate_labels

    try:
        check_compatible(args.label_ckpt, args.image_ckpt)
    except DataError as err:
        log.error("%s", err)
        return 2
    common = ["--seed", str(args.seed), "--device", args.device] + ["--overwrite"] * args.overwrite
    labels = args.out / "labels"
    label_argv = ["--ckpt", str(args.label_ckpt), "--num-samples", str(args.num_samples), "--out", str(labels),
                  *common, *(["--condition", args.condition] if args.condition else []), *["--repair"] * args.repair,
                  *(["--condition-from", str(args.condition_from)] if args.condition_from else []),
                  *(["--steps", str(args.label_steps)] if args.label_steps else [])]  # fmt: skip
    rc = generate_labels.main(label_argv)
    if rc != 0:
        return rc
    image_argv = ["--ckpt", str(args.image_ckpt), "--labels", str(labels), "--out", str(args.out / "images"),
                  "--batch-size", str(args.batch_size), *common,
                  *(["--steps", str(args.image_steps)] if args.image_steps else [])]  # fmt: skip
    rc = generate.main(image_argv)
    if rc == 0:
        log.info("wrote %d pair(s): %s and %s", args.num_samples, labels, args.out / "images")
    return rc


if __name__ == "__main__":
    sys.exit(main())
