"""The utility experiment at tiny size: training-set composition, paired t-intervals, the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.segmenter import Case
from evaluation.utility import main, t_interval, training_sets
from tests.evaluation.conftest import export_phantoms

NAMES = ["background", "outer", "middle", "inner"]


def case(vid: str, name: str) -> Case:
    return Case(id=vid, image_path=Path(name), image=torch.zeros(1, 8, 8, 8),
                label=torch.zeros(1, 8, 8, 8, dtype=torch.long), affine=np.eye(4))  # fmt: skip


def cases(prefix: str, n: int) -> list[Case]:
    return [case(f"{prefix}{i}", f"{prefix}{i}.nii.gz") for i in range(n)]


def test_t_interval_known_answer() -> None:
    d = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    assert d["mean"] == 2.0 and d["high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert t_interval([0.5])["low"] is None


def test_training_sets_isolate_new_maps() -> None:
    real, new = cases("r", 5), cases("g", 6)
    synth = [case(c.id, f"{c.id}_s0.nii.gz") for c in real]
    sets = training_sets(real, synth, new, 2, seed=0)
    chosen = {c.id for c in sets["real"]}
    assert len(chosen) == 2
    assert {c.id for c in sets["real+synth"][2:]} == chosen  # images of the same subjects' maps
    assert len(sets["real+new"]) == len(sets["real+synth"]) == 4  # same number of added volumes
    assert all(c.id.startswith("g") for c in sets["real+new"][2:]) and len(sets["new"]) == 6
    with pytest.raises(ValueError, match="needs 9 real"):
        training_sets(real, synth, new, 9, seed=0)


def test_cli_tiny(tmp_path: Path) -> None:
    export_phantoms("train", tmp_path / "train", 3)
    export_phantoms("train", tmp_path / "synth", 3, "_s0")  # stands in for images generated from the training maps
    export_phantoms("val", tmp_path / "new", 3, "_s0", seed=5)  # stands in for generated pairs
    export_phantoms("test", tmp_path / "test", 2)
    out = tmp_path / "utility.json"
    argv = ["--train-images", str(tmp_path / "train" / "images"), "--train-labels", str(tmp_path / "train" / "labels"),
            "--test-images", str(tmp_path / "test" / "images"), "--test-labels", str(tmp_path / "test" / "labels"),
            "--synth-images", str(tmp_path / "synth" / "images"), "--new-images", str(tmp_path / "new" / "images"),
            "--new-labels", str(tmp_path / "new" / "labels"), "--class-names", *NAMES, "--data-range", "-1", "1",
            "--regimes", "1", "2", "--seeds", "0", "1", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    runs = report["results"]["runs"]
    assert len(runs) == 2 * 2 * 4
    diff = report["results"]["differences"]["(real+new) - (real)"]
    assert diff["pooled"]["n"] == 4 and diff["1"]["n"] == 2
    keyed = {(r["regime"], r["seed"], r["arm"]): r["mean"] for r in runs}
    expected = np.mean([keyed[(g, s, "real+new")] - keyed[(g, s, "real")] for g in (1, 2) for s in (0, 1)])
    assert diff["pooled"]["mean"] == pytest.approx(expected)
    assert "paired difference" in out.with_suffix(".md").read_text()
    assert main(argv) == 2  # the report exists: --overwrite needed
