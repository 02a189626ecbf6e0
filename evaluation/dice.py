"""Per-class Dice on foreground classes, with the empty-class cases made explicit.

Per volume and foreground class c (background, class 0, is excluded):
- c present in the ground truth: Dice = 2 |P ∩ G| / (|P| + |G|) (MONAI ``DiceMetric``);
- c absent from the ground truth but predicted: Dice = 0 (false positives count);
- c absent from both: NaN, "not applicable": left out of that class's mean and counted as ``n_absent_both``.
A class's Dice is the mean over the volumes where it applies; the overall mean is the mean of the class means
over classes that apply to at least one volume (classes that never apply are listed, not averaged in as 0 or 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric

from dataset import one_hot


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


def summarise_dice(values: np.ndarray | torch.Tensor, class_names: list[str]) -> dict:
    """Per-class and mean Dice over volumes.

    Args:
        values: (N, K - 1) from :func:`per_class_dice`, stacked over volumes.
        class_names: K names, background first.

    Returns:
        {"per_class": {name: {mean, std, n_valid, n_absent_both}}, "mean", "n_volumes", "classes_never_present"}.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(class_names) - 1:
        raise ValueError(f"values must be (N, {len(class_names) - 1}), got {arr.shape}")
    per_class, means, never = {}, [], []
    for c, name in enumerate(class_names[1:]):
        col = arr[:, c]
        valid = col[~np.isnan(col)]
        mean = float(valid.mean()) if valid.size else math.nan
        per_class[name] = {
            "mean": mean,
            "std": float(valid.std()) if valid.size else math.nan,
            "n_valid": int(valid.size),
            "n_absent_both": int(col.size - valid.size),
        }
        (means if valid.size else never).append(mean if valid.size else name)
    return {
        "per_class": per_class,
        "mean": float(np.mean(means)) if means else math.nan,
        "n_volumes": int(arr.shape[0]),
        "classes_never_present": never,
    }
