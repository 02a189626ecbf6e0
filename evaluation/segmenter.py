"""The Dice-protocol segmenter: a MONAI 3D ``UNet`` (small CPU default: channels 8-16-32, one residual unit), its
config, DiceCE training, sliding-window prediction, per-class Dice and its checkpoint (``torch.save`` of primitives
and a state dict, loadable with ``weights_only=True``).

Images are (1, D, H, W) in [0, 1], mapped from their data range (:class:`evaluation.intensity.IntensityRange`);
label maps are integers in [0, num_classes). Training samples batches (and random crops when ``patch_size`` is
set) from a seeded generator; prediction is MONAI sliding-window inference with the training window. Used by the
Dice protocol's command line (``evaluation/segmentation.py``), the label metrics, the utility experiment and the
segmenter learning curve.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import DataError
from dataset.cli import one_line
from dataset.dice import per_class_dice
from dataset.files import atomic_torch_save, read_checkpoint
from dataset.label_table import LabelTable, recorded_label_table, remap_labels
from dataset.nifti import load_pair, save_nifti
from evaluation.dice import summarise_dice
from evaluation.intensity import IntensityRange
from evaluation.pairing import pair_folders

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "med-lsdm/dice-segmenter/1"


def default_class_names(num_classes: int) -> list[str]:
    """Class names when none are given: ``background, class_1, ..., class_{K-1}``."""
    return ["background"] + [f"class_{c}" for c in range(1, num_classes)]


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


def load_cases(
    image_dir: Path, label_dir: Path, num_classes: int, rng: IntensityRange, table: LabelTable | None = None
) -> list[Case]:
    """Images paired with label maps by name (``<id>`` or ``<id>_s<k>`` images, ``<id>`` labels).

    Args:
        table: the label table the maps' values are source ids of (a model trained on sparse ids): read through
            it into class ids 0..num_classes-1; None: the table recorded beside ``label_dir``
            (:func:`dataset.label_table.recorded_label_table`: maps of ``generate_labels``, ``--export-real``), and
            without one the maps hold class ids.

    Raises:
        DataError: pairing problems, grid mismatch, bad label values, out-of-range intensities.
        ValueError: a table of another class count than ``num_classes``.
    """
    if table is None:
        table = recorded_label_table(label_dir)
    if table is not None and table.label_nc != num_classes:
        raise ValueError(f"label table {table.name!r} has {table.label_nc} classes, the segmenter {num_classes}")
    cases = []
    for pair in pair_folders(label_dir, image_dir):
        # also checks the grids; with a table the values are checked by remap_labels instead of the range
        data, label, affine = load_pair(pair.synthetic, pair.reference, None if table is not None else num_classes)
        if table is not None:
            label = remap_labels(label, table, str(pair.reference))
        image = torch.from_numpy(rng.to_unit(data, str(pair.synthetic)))[None]
        label_t = torch.from_numpy(label)[None]
        cases.append(Case(id=pair.id, image_path=pair.synthetic, image=image, label=label_t, affine=affine))
    return cases


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
            dice = summarise_dice(values, default_class_names(cfg.num_classes))
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
