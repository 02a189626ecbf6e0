"""The segmenter learning curve and the budget it picks: known answers, and the CLI at tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.intensity import IntensityRange
from evaluation.segmenter import SegConfig, dice_of_cases, load_cases, train_segmenter
from evaluation.segmenter_curve import levelled_step, main, mean_curve
from tests.evaluation.conftest import export_phantoms

NAMES = ["background", "outer", "middle", "inner"]


def test_levelled_step_known_answer() -> None:
    curve = [[10, 0.2], [20, 0.5], [30, 0.695], [40, 0.70], [50, 0.69]]
    assert levelled_step(curve, 0.01) == 30  # 0.695 is within 0.01 of the best 0.70
    assert levelled_step(curve, 0.0) == 40
    assert levelled_step(curve, 1.0) == 10
    mean = mean_curve([[[1, 0.2], [2, 0.4]], [[1, 0.4], [2, 0.8]]])
    assert mean == [[1, pytest.approx(0.3)], [2, pytest.approx(0.6)]]
    with pytest.raises(ValueError, match="same steps"):
        mean_curve([[[1, 0.2]], [[2, 0.4]]])


def test_curve_leaves_training_unchanged(tmp_path: Path) -> None:
    """Evaluating during training draws no random numbers: same weights; the last point is the returned net's Dice."""
    export_phantoms("train", tmp_path / "train", 3)
    export_phantoms("val", tmp_path / "val", 2, seed=3)
    rng = IntensityRange(-1, 1, clip=True)
    train = load_cases(tmp_path / "train" / "images", tmp_path / "train" / "labels", 4, rng)
    val = load_cases(tmp_path / "val" / "images", tmp_path / "val" / "labels", 4, rng)
    cfg = SegConfig(num_classes=4, channels=(4, 8), steps=5, seed=0)
    plain, _ = train_segmenter(train, cfg, progress=False)
    net, info = train_segmenter(train, cfg, progress=False, curve_cases=val, curve_every=2)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    assert [s for s, _ in info["curve"]] == [2, 4, 5]  # every 2 steps, and the last one
    final = dice_of_cases(net, val, tuple(info["window"]), 4)
    assert info["curve"][-1][1] == pytest.approx(float(np.nanmean(np.nanmean(final, 0))))
    with pytest.raises(ValueError, match="curve_every"):
        train_segmenter(train, cfg, progress=False, curve_cases=val)


def test_cli_tiny(tmp_path: Path) -> None:
    export_phantoms("train", tmp_path / "train", 3)
    export_phantoms("val", tmp_path / "val", 2, seed=3)
    out = tmp_path / "curve.json"
    argv = ["--train-images", str(tmp_path / "train" / "images"), "--train-labels", str(tmp_path / "train" / "labels"),
            "--val-images", str(tmp_path / "val" / "images"), "--val-labels", str(tmp_path / "val" / "labels"),
            "--class-names", *NAMES, "--data-range", "-1", "1", "--regimes", "1", "3", "--seeds", "0", "1",
            "--steps", "4", "--eval-every", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    regimes = report["results"]["regimes"]
    assert set(regimes) == {"1", "3"} and set(regimes["1"]["curves"]) == {"0", "1"}
    for r in regimes.values():
        assert [s for s, _ in r["mean"]] == [2, 4]
        assert r["levelled_step"] == levelled_step(r["mean"], 0.01)
    assert report["results"]["budget"] == max(r["levelled_step"] for r in regimes.values())
    assert report["results"]["still_rising"] == (report["results"]["budget"] == 4)  # 4: the last step
    assert "levelled off" in out.with_suffix(".md").read_text()
    assert Image.open(out.with_suffix(".png")).size[0] > 0
    assert main(argv) == 2  # the report exists: --overwrite needed
    assert main([*argv[:-2], "--regimes", "4", "--out", str(tmp_path / "x.json")]) == 2  # only 3 subjects
    assert main([*argv, "--overwrite"]) == 0
