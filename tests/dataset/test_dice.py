"""Dice of label maps (dataset.dice): per-class known answers and mean_dice's absent-class convention."""

from __future__ import annotations

import math

import pytest
import torch

from dataset.dice import mean_dice, per_class_dice


def test_perfect_prediction_gives_dice_one():
    label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    label[:, :, 2:5, 2:5, 2:5] = 1
    label[0, :, 6:, 6:, 6:] = 2
    dice = per_class_dice(label, label, 3)
    assert dice[0].tolist() == [1.0, 1.0]
    assert dice[1, 0] == 1.0 and math.isnan(dice[1, 1])  # class 2 absent from both in volume 1


def test_dice_known_values_and_false_positives():
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0, :2] = 1  # two voxels of class 1
    pred = torch.zeros_like(target)
    pred[0, 0, 0, 0, 1:3] = 1  # two voxels, one overlapping
    pred[0, 0, 3, 3, 3] = 2  # class 2 predicted but absent from the ground truth
    dice = per_class_dice(pred, target, 3)
    assert dice[0, 0].item() == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    assert dice[0, 1].item() == 0.0


def test_mean_dice_averages_the_classes_present_in_either() -> None:
    touching = torch.zeros(8, 8, 8, dtype=torch.int64)
    touching[:4] = 1
    touching[4:] = 2
    apart = torch.zeros(8, 8, 8, dtype=torch.int64)
    apart[:3] = 1
    apart[5:] = 2
    assert mean_dice(touching, touching, 3) == 1.0
    # class 1: 2 * 192 / (256 + 192); class 2: the same by symmetry
    assert mean_dice(touching, apart, 3) == pytest.approx(384 / 448)
    two, one = torch.zeros(8, 8, 8, dtype=torch.int64), torch.zeros(8, 8, 8, dtype=torch.int64)
    two[:2], one[:1] = 1, 1
    # class 1: 2 * 64 / (128 + 64); class 2 absent from both: left out (as 1 it would give 5/6, as 0 1/3)
    assert mean_dice(two, one, 3) == pytest.approx(2 / 3)
    assert mean_dice(two, apart, 3) == pytest.approx((2 * 128 / (128 + 192) + 0.0) / 2)  # class 2 missed: 0
    assert mean_dice(torch.zeros(4, 4, 4, dtype=torch.int64), torch.zeros(4, 4, 4, dtype=torch.int64), 3) == 1.0
