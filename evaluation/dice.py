"""Summary over volumes of the per-class Dice of :func:`dataset.dice.per_class_dice`.

A class absent from both prediction and ground truth of a volume (NaN) is left out of that class's mean and counted
as ``n_absent_both``. A class's Dice is the mean over the volumes where it applies; the overall mean is the mean of
the class means over classes that apply to at least one volume (classes that never apply are listed, not averaged
in as 0 or 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def summarise_dice(values: np.ndarray | torch.Tensor, class_names: list[str]) -> dict:
    """Per-class and mean Dice over volumes.

    Args:
        values: (N, K - 1) from :func:`dataset.dice.per_class_dice`, stacked over volumes.
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
