"""New (image, label) pairs from two checkpoints: new label maps, then an image for each.

    python scripts/generate_pairs.py --label-ckpt runs/label_diffusion/.../last.ckpt \
        --image-ckpt runs/diffusion/.../last.ckpt --num-samples 8 --out OUT [--seed 0] \
        [--condition grey_matter=650 | --condition-from REAL_LABELS] [--repair] [--overwrite]

Runs ``scripts/generate_labels.py`` into ``OUT/labels`` (``<id>.nii.gz`` plus its run record), then
``scripts/generate.py`` on that folder into ``OUT/images`` (``<id>_s0.nii.gz``, the same ids), in this process.
Both halves are written into a staging folder inside ``OUT`` and moved into place together only when both are
complete, then ``OUT/pairs_run.json`` records the pair: a refused, failed or killed run leaves the previous pairs as
they were, never labels of one run beside images of another. Each half keeps its own run record inside its folder;
``--overwrite`` replaces ``labels/`` and ``images/`` only when ``pairs_run.json`` lists them. Every option is checked
before anything is sampled; a user error prints one line and exits 2. The image checkpoint must be trained on the
same class table (names and count; the same label table when the data had sparse ids: the maps
are written, and read again, in the user's ids) and block size as the label one.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from dataset import DataError
from dataset.cli import ArgumentParser, pick_device, positive_int, read_stage_checkpoint, run_cli
from dataset.files import OutputFolder, write_run_record
from dataset.registry import label_table_of

log = logging.getLogger("generate_pairs")

#: The pair folder's run record (lists ``labels`` and ``images``: what ``--overwrite`` may replace).
RECORD = "pairs_run.json"
HALVES = ("labels", "images")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/generate_pairs.py`` (numbers checked while parsing: ``dataset.cli``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label-ckpt", required=True, type=Path, help="label diffusion checkpoint")
    p.add_argument("--image-ckpt", required=True, type=Path, help="stage-2 (image diffusion) checkpoint")
    p.add_argument("--num-samples", type=positive_int, default=1, help="number of pairs")
    p.add_argument("--out", required=True, type=Path, help="output folder (labels/ and images/ inside)")
    p.add_argument("--seed", type=int, default=0, help="seed of both halves")
    p.add_argument("--condition", default="", help="label attributes NAME=VALUE,... (see generate_labels.py)")
    p.add_argument("--condition-from", type=Path, default=None, help="label maps whose attributes map i asks for")
    p.add_argument("--repair", action="store_true", help="topology repair of the label maps (reported)")
    p.add_argument(
        "--label-steps", type=positive_int, default=None, help="label sampler steps (default: checkpoint's)"
    )
    p.add_argument(
        "--image-steps", type=positive_int, default=None, help="image sampler steps (default: checkpoint's)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="images sampled together")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace the pairs of a previous run in --out")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def check_compatible(label_ckpt: Path, image_ckpt: Path) -> None:
    """Refuse (one line) two checkpoints of the wrong stages or whose class tables or block sizes differ."""
    lab = read_stage_checkpoint(label_ckpt, "label_diffusion", "--label-ckpt")
    img = read_stage_checkpoint(image_ckpt, "diffusion", "--image-ckpt")
    if int(lab.get("label_nc", -1)) != int(img.get("label_nc", -2)):
        raise DataError(f"the label model has {lab.get('label_nc')} classes, the image model {img.get('label_nc')}")
    names = (lab.get("class_names"), (img.get("data_info") or {}).get("class_names") or img.get("class_names"))
    if all(n is not None for n in names) and list(names[0]) != list(names[1]):
        raise DataError(f"the label model's classes {list(names[0])} differ from the image model's {list(names[1])}")
    # the label maps travel in the user's ids: both models must read them through the same table
    tables = [label_table_of(hp.get("data_info")) for hp in (lab, img)]
    if [t.remap if t else None for t in tables] != [t.remap if t else None for t in reversed(tables)]:
        raise DataError(
            f"the label model's label table ({tables[0].name if tables[0] else 'none'}) differs from the image "
            f"model's ({tables[1].name if tables[1] else 'none'}): train both on one dataset config"
        )
    blocks = (lab.get("block_size"), img.get("block_size") or (img.get("data_info") or {}).get("block_size"))
    if all(b is not None for b in blocks) and list(blocks[0]) != list(blocks[1]):
        raise DataError(f"the label model's block size {list(blocks[0])} differs from the image model's "
                        f"{list(blocks[1])}")  # fmt: skip


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Check everything, claim ``--out``, run both halves into staging, then move the pair in together."""
    from scripts import generate, generate_labels

    pick_device(args.device)
    if args.condition_from is not None and not args.condition_from.is_dir():
        raise DataError(f"--condition-from {args.condition_from}: not a folder of label maps")
    check_compatible(args.label_ckpt, args.image_ckpt)
    with OutputFolder(args.out, args.overwrite) as claimed:
        plan = claimed.plan(HALVES, RECORD, tool="generate_pairs")
        staging = claimed.staging("pairs")
        labels, images = staging / "labels", staging / "images"
        common = ["--seed", str(args.seed), "--device", args.device]
        label_argv = ["--ckpt", str(args.label_ckpt), "--num-samples", str(args.num_samples), "--out", str(labels),
                      *common, *(["--condition", args.condition] if args.condition else []),
                      *["--repair"] * args.repair,
                      *(["--condition-from", str(args.condition_from)] if args.condition_from else []),
                      *(["--steps", str(args.label_steps)] if args.label_steps else [])]  # fmt: skip
        rc = generate_labels.main(label_argv)
        if rc != 0:
            return rc
        image_argv = ["--ckpt", str(args.image_ckpt), "--labels", str(labels), "--out", str(images),
                      "--batch-size", str(args.batch_size), *common,
                      *(["--steps", str(args.image_steps)] if args.image_steps else [])]  # fmt: skip
        rc = generate.main(image_argv)
        if rc != 0:
            return rc
        # both halves are complete: drop the old record, swap the recorded halves, then record the new pair
        (claimed.path / RECORD).unlink(missing_ok=True)
        for half in plan.files:
            if half.exists():  # listed by the old record and not a link (plan_outputs checked both)
                shutil.rmtree(half)
            (staging / half.name).rename(half)
        write_run_record(
            claimed.path / RECORD,
            {"tool": "generate_pairs", "argv": list(argv), "num_samples": args.num_samples, "outputs": list(HALVES)},
        )
    log.info("wrote %d pair(s): %s and %s", args.num_samples, args.out / "labels", args.out / "images")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 (one line) on a user error (``dataset.cli.run_cli``)."""
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
