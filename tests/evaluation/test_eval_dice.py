"""Dice summaries (known answers) and the Dice protocol (train / evaluate / augment) on tiny synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dataset.dice import per_class_dice
from evaluation.dice import summarise_dice
from evaluation.intensity import IntensityRange
from evaluation.segmentation import main
from evaluation.segmenter import SegConfig, dice_of_cases, load_cases, load_checkpoint, train_segmenter

NAMES = ["background", "bright", "dark"]
RANGE = ["--data-range", "-1", "1"]


def test_summary_excludes_not_applicable_cases():
    values = np.array([[1.0, np.nan], [0.5, np.nan], [0.0, np.nan]])
    s = summarise_dice(values, NAMES)
    bright = s["per_class"]["bright"]
    assert (bright["mean"], bright["n_valid"], bright["n_absent_both"]) == (0.5, 3, 0)
    assert bright["std"] == pytest.approx(np.std([1, 0.5, 0]))
    assert s["per_class"]["dark"]["n_absent_both"] == 3 and math.isnan(s["per_class"]["dark"]["mean"])
    assert s["mean"] == 0.5 and s["classes_never_present"] == ["dark"]
    with pytest.raises(ValueError, match="must be"):
        summarise_dice(values, NAMES[:2])


def _write_cases(folder, nifti, seeds, suffix="", noise=0.15):
    """Two boxes per 16^3 volume: class 1 bright, class 2 dark, on a mid-grey background, plus noise."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        label = np.zeros((16, 16, 16), np.int16)
        for cls in (1, 2):
            z, y, x = rng.integers(1, 9, 3)
            label[z : z + 6, y : y + 6, x : x + 6] = cls
        image = np.array([0.0, 0.8, -0.8], np.float32)[label] + noise * rng.standard_normal(label.shape)
        nifti(folder / "labels" / f"case{seed}.nii.gz", label)
        nifti(folder / "images" / f"case{seed}{suffix}.nii.gz", np.clip(image, -1, 1).astype(np.float32))


def test_trained_segmenter_learns_and_beats_chance(tmp_path, nifti):
    _write_cases(tmp_path / "train", nifti, range(4))
    _write_cases(tmp_path / "test", nifti, range(10, 12))
    rng = IntensityRange(-1, 1)
    train = load_cases(tmp_path / "train" / "images", tmp_path / "train" / "labels", 3, rng)
    test = load_cases(tmp_path / "test" / "images", tmp_path / "test" / "labels", 3, rng)
    cfg = SegConfig(num_classes=3, channels=(8, 16), steps=30, lr=2e-2, seed=0)
    net, info = train_segmenter(train, cfg, progress=False)
    assert info["loss_last_10pct"] < 0.5 * info["loss_first_10pct"]
    trained = np.nanmean(dice_of_cases(net, test, (16, 16, 16), 3))
    chance = np.nanmean(
        [per_class_dice(torch.randint(0, 3, c.label.shape)[None], c.label[None], 3).numpy() for c in test]
    )
    assert trained > 0.7 > chance + 0.3
    # Seeded: the same config gives the same network.
    tiny = SegConfig(num_classes=3, channels=(8, 16), steps=3, lr=1e-2, seed=0)
    net2, _ = train_segmenter(train, tiny, progress=False)
    net3, _ = train_segmenter(train, tiny, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net3.state_dict().values()))


def _flags(**paths) -> list[str]:
    """``--some-name PATH`` pairs from keyword arguments (underscores become dashes)."""
    return [x for key, value in paths.items() for x in (f"--{key.replace('_', '-')}", str(value))]


def test_cli_train_evaluate_and_augment(tmp_path, nifti):
    _write_cases(tmp_path / "train", nifti, range(3))
    _write_cases(tmp_path / "synth", nifti, range(20, 22), suffix="_s0", noise=0.25)
    _write_cases(tmp_path / "test", nifti, range(10, 12))
    _write_cases(tmp_path / "test_synth", nifti, range(10, 12), suffix="_s0", noise=0.25)
    fit = ["--num-classes", "3", "--channels", "8", "16", "--steps", "8", "--lr", "2e-2", "--no-progress", *RANGE]
    model = tmp_path / "seg.pt"
    train, test = tmp_path / "train", tmp_path / "test"
    assert main(["train", *_flags(images=train / "images", labels=train / "labels", out=model), *fit]) == 0
    net, cfg, training = load_checkpoint(model)  # weights_only=True inside
    assert cfg.num_classes == 3 and training["window"] == [16, 16, 16]

    out = tmp_path / "dice.json"
    evaluate = ["evaluate", *_flags(model=model, labels=test / "labels", real=test / "images", out=out), *RANGE]
    assert main(evaluate + _flags(fake=tmp_path / "test_synth" / "images") + ["--class-names", *NAMES]) == 0
    report = json.loads(out.read_text())
    assert set(report["dice"]) == {"real", "synthetic"}
    assert report["dice"]["synthetic"]["n_volumes"] == 2
    assert [v["image"] for v in report["per_volume"]["synthetic"]] == ["case10_s0.nii.gz", "case11_s0.nii.gz"]
    assert "| data | bright | dark | mean |" in out.with_suffix(".md").read_text()
    assert main(evaluate) == 2  # refuses to overwrite

    aug = tmp_path / "aug.json"
    paths = _flags(
        train_images=train / "images",
        train_labels=train / "labels",
        synth_images=tmp_path / "synth" / "images",
        synth_labels=tmp_path / "synth" / "labels",
        test_images=test / "images",
        test_labels=test / "labels",
        out=aug,
    )
    assert main(["augment", *paths, *fit]) == 0
    report = json.loads(aug.read_text())
    assert list(report["dice"]) == ["real", "real + synthetic"]
    assert report["training"]["real + synthetic"]["n_cases"] == 5
    assert all(block["n_volumes"] == 2 for block in report["dice"].values())


def test_segmenter_argument_checks():
    with pytest.raises(ValueError, match="num-classes"):
        SegConfig(num_classes=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        SegConfig(num_classes=3, patch_size=(16, 16, 10))
