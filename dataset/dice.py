"""Dice of integer label maps (MONAI's ``DiceMetric``): the one implementation behind the Dice protocol, the label
metrics' nearest-training-map search and the label autoencoder's validation monitor.

Per volume and foreground class c (background, class 0, is excluded):

- c present in the ground truth: Dice = 2 |P ∩ G| / (|P| + |G|);
- c absent from the ground truth but predicted: Dice = 0 (false positives count);
- c absent from both: NaN, "not applicable". What a caller makes of it is its own convention, written where it
  averages (:func:`mean_dice` leaves it out; a summary over volumes counts it, see ``evaluation.dice``).
"""

from __future__ import annotations

import math

import torch
from monai.metrics import DiceMetric

from dataset.contract import one_hot


def per_class_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of every foreground class of every volume.

    Args:
        pred: (B, 1, D, H, W) integer predicted labels in [0, num_classes).
        target: (B, 1, D, H, W) integer ground-truth labels in [0, num_classes).
        num_classes: K, background included (K >= 2).

    Returns:
        (B, K - 1) float64; NaN where the class is absent from both prediction and ground truth.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p, t = one_hot(pred, num_classes), one_hot(target, num_classes)  # (B, K, D, H, W)
    # ignore_empty=False: empty ground truth scores 0 if predicted and 1 if not; the second case is
    # replaced by NaN below, because "nothing to find, nothing found" says nothing about the segmenter.
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t).double()
    absent_both = (p[:, 1:].flatten(2).sum(-1) == 0) & (t[:, 1:].flatten(2).sum(-1) == 0)
    return torch.where(absent_both, torch.full_like(dice, math.nan), dice)


def mean_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean foreground Dice of two (D, H, W) maps over the classes present in either (1.0 if neither has any)."""
    dice = per_class_dice(pred[None, None], target[None, None], num_classes)[0]
    present = dice[~dice.isnan()]
    return float(present.mean()) if present.numel() else 1.0
