"""Dice protocol: how useful are synthetic volumes to a segmentation network?

Three commands (``python evaluation/segmentation.py CMD ...`` or ``python -m evaluation.segmentation CMD``):

- ``train``: train a MONAI 3D ``UNet`` (small CPU default: channels 8-16-32, one residual unit) with DiceCE on
  real training volumes (``--images``/``--labels`` folders, matching file names), optionally plus extra
  (e.g. synthetic) volumes; writes a checkpoint (``torch.save`` of primitives + state dict).
- ``evaluate``: per-class foreground Dice (``evaluation.dice``) of a trained network on real test volumes and
  on synthetic volumes generated from the same test label maps (``--fake``; names ``<id>`` or ``<id>_s<k>``).
- ``augment``: the augmentation experiment: trains twice with the same seed and schedule, on real only and on
  real + synthetic, and evaluates both on the real test set.

Images are mapped to [0, 1] from their data range (``evaluation.intensity.resolve_range``: stated with
``--data-range``, else recorded with the files, else an error); label maps are integer NIfTI in
[0, num_classes). ``evaluate --predictions DIR`` also writes the predicted label maps, named after the image
files (each name checked with ``dataset.files.check_name`` before any inference). Training samples batches
(and random crops when ``--patch-size`` is given) from a seeded generator; prediction is MONAI sliding-window
inference with the training window. Results go to a JSON report and a Markdown table (``evaluation.report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import DataError
from dataset.cli import (
    ArgumentParser,
    check_unique,
    float_in,
    nonnegative_int,
    one_line,
    pick_device,
    positive_int,
    run_cli,
)
from dataset.dice import per_class_dice
from dataset.files import (
    atomic_torch_save,
    check_name,
    check_not_link,
    check_output_dir,
    check_output_files,
    file_sha256,
    read_checkpoint,
    read_run_record,
    recorded_outputs,
    write_run_record,
)
from dataset.nifti import load_pair, save_nifti, strip_nifti_suffix
from evaluation.cli_common import HelpFormatter, add_range_arguments
from evaluation.dice import summarise_dice
from evaluation.intensity import IntensityRange, resolve_range
from evaluation.pairing import pair_folders
from evaluation.report import dice_markdown, header, report_paths, write_report

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "med-lsdm/dice-segmenter/1"
PREDICTIONS_RECORD = "predictions.json"
DICE_DEFINITION = (
    "Dice per foreground class (background excluded), MONAI DiceMetric on argmax predictions; a class absent "
    "from ground truth and prediction is not applicable (excluded, counted); mean = mean of class means"
)


@dataclass(frozen=True)
class SegConfig:
    """Hyper-parameters of the Dice-protocol segmenter (primitives only: stored in the checkpoint).

    Args:
        num_classes: K, background included.
        channels: UNet channels per level; the volume (or patch) size must be divisible by 2**(levels-1).
        num_res_units: residual units per UNet block.
        patch_size: (D, H, W) training crop and inference window; None trains on whole volumes.
        steps: optimiser steps.
        batch_size: volumes (or crops) per step.
        lr: Adam learning rate.
        seed: seeds the network init, batch order and crops.
    """

    num_classes: int
    channels: tuple[int, ...] = (8, 16, 32)
    num_res_units: int = 1
    patch_size: tuple[int, int, int] | None = None
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"--num-classes must be >= 2, got {self.num_classes}")
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"--channels needs >= 2 positive values, got {self.channels}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.num_res_units < 0:
            raise ValueError("--steps and --batch-size must be >= 1, --lr > 0, --res-units >= 0")
        if self.patch_size is not None:
            if len(self.patch_size) != 3:
                raise ValueError(f"--patch-size needs 3 values (D H W), got {self.patch_size}")
            self.check_divisible(tuple(self.patch_size), "--patch-size")

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def check_divisible(self, shape: tuple[int, ...], what: str) -> None:
        if any(s % self.divisor for s in shape):
            raise ValueError(
                f"{what} {shape} must be divisible by {self.divisor} for a {len(self.channels)}-level UNet"
            )


@dataclass
class Case:
    """One image with its label map: image (1, D, H, W) float32 in [0, 1], label (1, D, H, W) int64.

    ``affine`` is the (4, 4) voxel-to-world matrix of the image (written with its predicted label map).
    """

    id: str
    image_path: Path
    image: torch.Tensor
    label: torch.Tensor
    affine: np.ndarray


def build_net(cfg: SegConfig) -> torch.nn.Module:
    """MONAI 3D UNet: 1 input channel → K logits."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=cfg.num_classes,
        channels=tuple(cfg.channels),
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.num_res_units,
        norm="INSTANCE",
    )


def load_cases(image_dir: Path, label_dir: Path, num_classes: int, rng: IntensityRange) -> list[Case]:
    """Images paired with label maps by name (``<id>`` or ``<id>_s<k>`` images, ``<id>`` labels).

    Raises:
        DataError: pairing problems, grid mismatch, bad label values, out-of-range intensities.
    """
    cases = []
    for pair in pair_folders(label_dir, image_dir):
        data, label, affine = load_pair(pair.synthetic, pair.reference, num_classes)  # also checks the grids
        image = torch.from_numpy(rng.to_unit(data, str(pair.synthetic)))[None]
        label_t = torch.from_numpy(label)[None]
        cases.append(Case(id=pair.id, image_path=pair.synthetic, image=image, label=label_t, affine=affine))
    return cases


def image_range(
    images: Path, labels: Path, stated: tuple[float, float] | None, options: tuple[str, ...], what: str, clip: bool
) -> IntensityRange:
    """Data range of a folder of images (paired with ``labels``): stated, else recorded, else an error."""
    files = [p.synthetic for p in pair_folders(labels, images)]
    return resolve_range(images, stated, options, what, files, clip)


def _crop(case: Case, size: tuple[int, int, int] | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return case.image, case.label
    shape = case.image.shape[1:]
    if any(s < p for s, p in zip(shape, size)):
        raise DataError(f"{case.image_path}: volume {tuple(shape)} is smaller than --patch-size {size}")
    start = [int(torch.randint(0, s - p + 1, (1,), generator=gen)) for s, p in zip(shape, size)]
    window = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, size))
    return case.image[window], case.label[window]


def train_segmenter(
    cases: list[Case],
    cfg: SegConfig,
    device: str = "cpu",
    progress: bool = True,
    curve_cases: list[Case] | None = None,
    curve_every: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """Train the segmenter with DiceCE.

    Args:
        cases: training cases (all the same shape unless ``cfg.patch_size`` is set).
        cfg: hyper-parameters.
        device: torch device.
        progress: show a progress bar.
        curve_cases: held-out cases for a learning curve (e.g. the validation split); needs ``curve_every``.
        curve_every: with ``curve_cases``, the mean foreground Dice on them after every ``curve_every`` steps
            and after the last one. The evaluation draws no random numbers and the network has no running
            statistics (instance norm), so the training trajectory is the same with or without a curve.

    Returns:
        (network in eval mode, training info: first/last loss, window, case count, and with a curve
        ``curve``: a list of ``[step, mean Dice]``).
    """
    from monai.losses import DiceCELoss

    if not cases:
        raise ValueError("no training cases")
    shapes = {tuple(c.image.shape[1:]) for c in cases}
    if cfg.patch_size is None and len(shapes) > 1:
        raise DataError(f"training volumes have different shapes {sorted(shapes)}; pass --patch-size D H W")
    window = tuple(cfg.patch_size) if cfg.patch_size is not None else next(iter(shapes))
    cfg.check_divisible(window, "training volume shape" if cfg.patch_size is None else "--patch-size")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(cfg).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if curve_cases is not None and curve_every < 1:
        raise ValueError("a learning curve needs curve_every >= 1")
    curve: list[list[float]] = []
    losses = []
    net.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="segmenter training", disable=None if progress else True):
        idx = torch.randint(0, len(cases), (cfg.batch_size,), generator=gen).tolist()
        crops = [_crop(cases[i], cfg.patch_size, gen) for i in idx]
        x = torch.stack([c[0] for c in crops]).to(device)  # (B, 1, D, H, W)
        y = torch.stack([c[1] for c in crops]).to(device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if curve_cases is not None and (step % curve_every == 0 or step == cfg.steps):
            values = dice_of_cases(net.eval(), curve_cases, window, cfg.num_classes)
            dice = summarise_dice(values, _class_names(None, cfg.num_classes))
            curve.append([step, dice["mean"]])
            net.train()
    head = float(np.mean(losses[: max(1, len(losses) // 10)]))
    tail = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    info = {"n_cases": len(cases), "window": list(window), "loss_first_10pct": head, "loss_last_10pct": tail}
    if curve_cases is not None:
        info["curve"] = curve
    logger.info("segmenter: loss %.4f -> %.4f over %d steps", head, tail, cfg.steps)
    return net.eval(), info


@torch.no_grad()
def predict(net: torch.nn.Module, image: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """Label prediction of one (1, D, H, W) image by sliding-window inference → (1, D, H, W) int64."""
    from monai.inferers import sliding_window_inference

    device = next(net.parameters()).device
    logits = sliding_window_inference(image[None].to(device), window, 1, net, overlap=0.25, mode="gaussian")
    return logits.argmax(1).cpu()


def dice_of_cases(
    net: torch.nn.Module,
    cases: list[Case],
    window: tuple[int, int, int],
    num_classes: int,
    save_to: list[Path] | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """(N, K - 1) per-class Dice of the network's predictions on each case.

    ``save_to`` (one path per case) also writes each prediction as a uint8 NIfTI on the image's grid.
    """
    rows = []
    for i, case in enumerate(cases):
        pred = predict(net, case.image, window)
        rows.append(per_class_dice(pred[None], case.label[None], num_classes)[0].numpy())
        if save_to is not None:
            save_nifti(save_to[i], pred[0].numpy().astype(np.uint8), case.affine, overwrite=overwrite)
    return np.stack(rows)


def _dice_block(
    net: torch.nn.Module,
    cases: list[Case],
    window: tuple,
    names: list[str],
    save_to: list[Path] | None = None,
    overwrite: bool = False,
) -> tuple[dict, list]:
    values = dice_of_cases(net, cases, window, len(names), save_to, overwrite)
    per_volume = [
        {"id": c.id, "image": c.image_path.name, "dice": dict(zip(names[1:], v.tolist()))}
        for c, v in zip(cases, values)
    ]
    return summarise_dice(values, names), per_volume


def save_checkpoint(path: Path, net: torch.nn.Module, cfg: SegConfig, info: dict) -> None:
    """Checkpoint of primitives and tensors only, so it loads with ``weights_only=True``."""
    hparams = asdict(cfg) | {"channels": list(cfg.channels), "patch_size": cfg.patch_size and list(cfg.patch_size)}
    atomic_torch_save(
        path, {"format": CHECKPOINT_FORMAT, "hparams": hparams, "state_dict": net.state_dict(), "training": info}
    )


def is_our_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a segmenter checkpoint written by :func:`save_checkpoint` (``--overwrite`` check)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable or foreign file is simply not ours
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, SegConfig, dict]:
    """(network in eval mode, config, training info) from :func:`save_checkpoint`'s file.

    Raises:
        DataError: a missing, unreadable, foreign or damaged checkpoint (one line naming the file).
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a Dice-protocol segmenter checkpoint (format {CHECKPOINT_FORMAT})")
    try:
        hp = ckpt["hparams"]
        cfg = SegConfig(
            **(hp | {"channels": tuple(hp["channels"]), "patch_size": hp["patch_size"] and tuple(hp["patch_size"])})
        )
        net = build_net(cfg)
        net.load_state_dict(ckpt["state_dict"])
        training = dict(ckpt["training"])
        training["window"] = [int(v) for v in training["window"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a file of our format with missing parts
        raise DataError(f"{path}: damaged segmenter checkpoint ({one_line(err)[:200]})") from None
    return net.eval().to(device), cfg, training


def _class_names(names: list[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    check_unique(names, "--class-names")  # a repeated name would show one class's Dice under two columns
    if len(names) != num_classes:
        raise ValueError(f"--class-names needs {num_classes} names (background first), got {len(names)}")
    return list(names)


def _stated(args: argparse.Namespace, side: str) -> tuple[float, float] | None:
    value = getattr(args, f"{side}_range") or args.data_range
    return tuple(value) if value else None


def _range(args: argparse.Namespace, side: str, images: Path, labels: Path, what: str) -> IntensityRange:
    options = ("--data-range", f"--{side}-range")
    return image_range(images, labels, _stated(args, side), options, what, args.clip)


def _check_report(out: Path, overwrite: bool) -> None:
    json_path, md_path = report_paths(out)
    check_output_files([json_path, md_path], overwrite, ours=lambda _p: read_run_record(json_path) is not None)


def _prediction_plan(cases_by_set: dict[str, list[Case]], folder: Path, overwrite: bool) -> dict[str, list[Path]]:
    """Where each predicted label map goes: ``folder/<set>/<image name>``, every name and place checked first.

    ``--overwrite`` replaces only the files the previous run recorded in ``folder/predictions.json``; a
    sub-folder or file that is a symbolic link is refused (nothing is written through a link).
    """
    ours = {p.absolute() for p in recorded_outputs(folder / PREDICTIONS_RECORD)}
    plan: dict[str, list[Path]] = {}
    for set_name, cases in cases_by_set.items():
        # first estimate of the space needed: one uncompressed uint8 label map per case
        need = sum(int(case.label.numel()) for case in cases)
        check_not_link(folder, "--predictions")
        check_not_link(folder / set_name, "--predictions")
        sub = check_output_dir(folder / set_name, min_free_bytes=need, what="--predictions")
        paths = []
        for case in cases:
            stem = check_name(strip_nifti_suffix(case.image_path.name), "image file name")
            paths.append(sub / f"{stem}.nii.gz")
        check_output_files(paths, overwrite, ours=lambda p: p.absolute() in ours, what="--predictions")
        plan[set_name] = paths
    return plan


def _record_predictions(folder: Path, plan: dict[str, list[Path]], model: Path, argv: list[str]) -> None:
    """Run record of the predictions (what made them, which files), so ``--overwrite`` can tell them apart."""
    outputs = sorted(str(p.relative_to(folder)) for paths in plan.values() for p in paths)
    record = {"tool": "evaluation.segmentation evaluate", "command": argv, "model_sha256": file_sha256(model)}
    write_run_record(folder / PREDICTIONS_RECORD, record | {"outputs": outputs})


def _config(args: argparse.Namespace, num_classes: int) -> SegConfig:
    return SegConfig(
        num_classes=num_classes,
        channels=tuple(args.channels),
        num_res_units=args.res_units,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace, argv: list[str]) -> dict:
    """``train``: fit on real (+ extra) volumes and save the checkpoint to ``--out``."""
    pick_device(args.device)
    check_output_files([args.out], args.overwrite, ours=is_our_checkpoint)
    cfg = _config(args, args.num_classes)
    if (args.extra_images is None) != (args.extra_labels is None):
        raise ValueError("--extra-images and --extra-labels go together")
    real_rng = _range(args, "real", args.images, args.labels, "--images")
    fake_rng = None
    if args.extra_images is not None:
        fake_rng = _range(args, "fake", args.extra_images, args.extra_labels, "--extra-images")
    cases = load_cases(args.images, args.labels, cfg.num_classes, real_rng)
    if fake_rng is not None:
        cases += load_cases(args.extra_images, args.extra_labels, cfg.num_classes, fake_rng)
    net, info = train_segmenter(cases, cfg, args.device, not args.no_progress)
    intensity = {"real": real_rng.describe()} | ({"extra": fake_rng.describe()} if fake_rng is not None else {})
    info |= {"command": argv, "intensity": intensity}
    save_checkpoint(args.out, net, cfg, info)
    logger.info("wrote %s", args.out)
    return info


def cmd_evaluate(args: argparse.Namespace, argv: list[str]) -> dict:
    """``evaluate``: Dice of a trained segmenter on real test volumes and on synthetic ones."""
    pick_device(args.device)
    _check_report(args.out, args.overwrite)
    if args.predictions is not None:
        check_not_link(args.predictions, "--predictions")
        check_output_dir(args.predictions, what="--predictions")
    net, cfg, training = load_checkpoint(args.model, args.device)
    names = _class_names(args.class_names, cfg.num_classes)
    ranges = {"real": _range(args, "real", args.real, args.labels, "--real")}
    if args.fake is not None:
        ranges["synthetic"] = _range(args, "fake", args.fake, args.labels, "--fake")
    window = tuple(training["window"])
    folders = {"real": args.real, "synthetic": args.fake}
    cases = {k: load_cases(folders[k], args.labels, cfg.num_classes, rng) for k, rng in ranges.items()}
    plan = _prediction_plan(cases, args.predictions, args.overwrite) if args.predictions is not None else {}
    dice, per_volume = {}, {}
    for set_name, set_cases in cases.items():
        dice[set_name], per_volume[set_name] = _dice_block(
            net, set_cases, window, names, plan.get(set_name), args.overwrite
        )
    if plan:
        _record_predictions(args.predictions, plan, args.model, argv)
    report = header("evaluation.segmentation", argv) | {
        "command_name": "evaluate",
        "model": {"path": args.model, "sha256": file_sha256(args.model), "training": training},
        "class_names": names,
        "definition": DICE_DEFINITION,
        "intensity": {k: rng.describe() for k, rng in ranges.items()},
        "predictions": {k: [str(p) for p in v] for k, v in plan.items()} or None,
        "dice": dice,
        "per_volume": per_volume,
        "notes": {"test label maps": str(args.labels), "inference": f"sliding window {list(window)}, overlap 0.25"},
    }
    write_report(args.out, report, dice_markdown(report))
    return report


def cmd_augment(args: argparse.Namespace, argv: list[str]) -> dict:
    """``augment``: train on real vs real + synthetic (same seed and schedule), test both on real."""
    pick_device(args.device)
    _check_report(args.out, args.overwrite)
    cfg = _config(args, args.num_classes)
    names = _class_names(args.class_names, cfg.num_classes)
    real_rng = _range(args, "real", args.train_images, args.train_labels, "--train-images")
    fake_rng = _range(args, "fake", args.synth_images, args.synth_labels, "--synth-images")
    test_rng = _range(args, "real", args.test_images, args.test_labels, "--test-images")
    real_train = load_cases(args.train_images, args.train_labels, cfg.num_classes, real_rng)
    synth_train = load_cases(args.synth_images, args.synth_labels, cfg.num_classes, fake_rng)
    test = load_cases(args.test_images, args.test_labels, cfg.num_classes, test_rng)
    dice, per_volume, training = {}, {}, {}
    for name, cases in (("real", real_train), ("real + synthetic", real_train + synth_train)):
        net, info = train_segmenter(cases, cfg, args.device, not args.no_progress)
        window = tuple(info["window"])
        dice[name], per_volume[name] = _dice_block(net, test, window, names)
        training[name] = info
    report = header("evaluation.segmentation", argv) | {
        "command_name": "augment",
        "class_names": names,
        "definition": DICE_DEFINITION + "; both networks tested on the real test set",
        "config": asdict(cfg),
        "training": training,
        "intensity": {"real": real_rng.describe(), "synthetic": fake_rng.describe(), "test": test_rng.describe()},
        "dice": dice,
        "per_volume": per_volume,
        "notes": {
            "training sets": f"real {len(real_train)}, real + synthetic {len(real_train) + len(synth_train)} volumes",
            "test set": f"{len(test)} real volumes",
        },
    }
    write_report(args.out, report, dice_markdown(report))
    return report


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", type=Path, required=True, help=out_help)
    add_range_arguments(p, "real images", "synthetic ones")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs written by this tool")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, required=True, help="K, background included")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[8, 16, 32], help="UNet channels per level")
    p.add_argument("--res-units", type=nonnegative_int, default=1, help="residual units per UNet block")
    p.add_argument(
        "--patch-size",
        type=positive_int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="training crop and inference window, divisible by 2^(levels-1); default: whole volumes",
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps")
    p.add_argument("--batch-size", type=positive_int, default=2, help="volumes (or crops) per step")
    p.add_argument("--lr", type=float_in(0, None, lo_open=True), default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds network init, batch order and crops")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (subcommands train, evaluate, augment)."""
    parser = ArgumentParser(prog="segmentation", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", required=True, help="what to run (each has its own --help)")
    report_help = "JSON report path; the Markdown goes next to it with .md (an --out ending in .md names the Markdown)"
    names_help = "class names, background first (default: background, class_1, ...)"
    p = sub.add_parser("train", help="train the segmenter on real (+ extra) volumes", formatter_class=HelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="real training images <id>.nii[.gz]")
    p.add_argument("--labels", type=Path, required=True, help="their label maps, same names")
    p.add_argument("--extra-images", type=Path, help="extra (e.g. synthetic) images, <id>[_s<k>] names")
    p.add_argument("--extra-labels", type=Path, help="label maps of the extra images")
    _training(p)
    _common(p, "checkpoint path (.pt)")
    p = sub.add_parser(
        "evaluate", help="Dice on real test volumes and on synthetic ones", formatter_class=HelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="segmenter checkpoint written by 'train'")
    p.add_argument("--labels", type=Path, required=True, help="test label maps <id>.nii[.gz]")
    p.add_argument("--real", type=Path, required=True, help="real test images <id>.nii[.gz]")
    p.add_argument("--fake", type=Path, help="synthetic images generated from the test label maps")
    p.add_argument("--class-names", nargs="+", help=names_help)
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="also write the predicted label maps to DIR/real/ and DIR/synthetic/, named after the images",
    )
    _common(p, report_help)
    p = sub.add_parser(
        "augment", help="train on real vs real + synthetic, test both on real", formatter_class=HelpFormatter
    )
    for name, text in (
        ("train-images", "real training images"),
        ("train-labels", "their label maps"),
        ("synth-images", "synthetic training images (<id>[_s<k>] names)"),
        ("synth-labels", "the label maps they were generated from"),
        ("test-images", "real test images"),
        ("test-labels", "their label maps"),
    ):
        p.add_argument(f"--{name}", type=Path, required=True, help=text)
    p.add_argument("--class-names", nargs="+", help=names_help)
    _training(p)
    _common(p, report_help)
    return parser


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "augment": cmd_augment}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for a user or data error, reported in one line)."""
    return run_cli(build_parser(), lambda args, argv: COMMANDS[args.command](args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
