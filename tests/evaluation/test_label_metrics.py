"""Mask-quality metrics with known answers: identical sets, scaled/shifted ellipsoids, components, adjacency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset.files import write_run_record
from dataset.nifti import save_nifti
from evaluation.label_metrics import (
    LabelMap,
    adjacent_pairs,
    class_volumes,
    evaluate,
    main,
    topology,
    volume_distances,
)

NAMES = ["background", "a", "b"]
VOXEL_ML = 0.008  # 2 x 2 x 2 mm voxels


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    c, r = np.array(centre)[:, None, None, None], np.array(radii)[:, None, None, None]
    return (((grid - c) / r) ** 2).sum(0) <= 1.0


def two_class_map(scale: float = 1.0, shift: int = 0) -> np.ndarray:
    """Class a: an ellipsoid; class b: a smaller one nested inside it (so a|b and background|a touch)."""
    label = np.zeros((24, 24, 24), dtype=np.int64)
    label[ellipsoid(label.shape, (12 + shift, 12, 12), (8 * scale, 6 * scale, 5 * scale))] = 1
    label[ellipsoid(label.shape, (12 + shift, 12, 12), (3 * scale, 3 * scale, 3 * scale))] = 2
    return label


def maps(*labels: np.ndarray) -> list[LabelMap]:
    return [LabelMap(f"m{i}", lab, VOXEL_ML) for i, lab in enumerate(labels)]


def test_identical_sets_have_zero_distance() -> None:
    real = maps(two_class_map(1.0), two_class_map(0.8), two_class_map(1.1, 2))
    result = evaluate(real, real, real, NAMES)
    v = result["volumes"]
    assert all(w == 0.0 for w in v["wasserstein_ml"].values())
    assert v["sliced_wasserstein_ml"] == pytest.approx(0.0, abs=1e-9)
    assert v["frechet_ml2"] == pytest.approx(0.0, abs=1e-6)
    assert result["topology"]["components_abs_diff_mean"] == 0.0
    assert result["adjacency"]["violations"] == {} and result["adjacency"]["missing"] == []
    # every map is its own nearest training map: flagged as a copy
    assert result["novelty"]["fake_to_train"]["mean"] == 1.0
    assert len(result["novelty"]["copies"]) == 3
    # whole anatomies, b always inside a: nothing incoherent
    assert result["coherence"]["incoherent"] == [] and result["coherence"]["containment_rules"] == ["b inside a"]


def test_volume_distance_of_scaled_ellipsoids_is_the_volume_difference() -> None:
    small, big = two_class_map(0.8), two_class_map(1.0)
    vs, vb = class_volumes(small, VOXEL_ML, 3), class_volumes(big, VOXEL_ML, 3)
    # voxel counts times 0.008 mL; the continuous ellipsoid volume 4/3 pi abc (minus the nested one) is close
    expected_a = (4 / 3 * np.pi * (8 * 6 * 5 - 27)) * VOXEL_ML
    assert vb[0] == pytest.approx(expected_a, rel=0.05)
    d = volume_distances(np.stack([vs]), np.stack([vb]), NAMES[1:])
    # one map each: W1 is the absolute volume difference per class; shifting does not change volumes
    assert d["wasserstein_ml"]["a"] == pytest.approx(abs(vb[0] - vs[0]))
    assert d["wasserstein_ml"]["b"] == pytest.approx(abs(vb[1] - vs[1]))
    shifted = class_volumes(two_class_map(1.0, 3), VOXEL_ML, 3)
    assert np.allclose(shifted, vb)


def test_components_euler_and_adjacency() -> None:
    label = np.zeros((20, 20, 20), dtype=np.int64)
    label[ellipsoid(label.shape, (5, 5, 5), (3, 3, 3))] = 1
    label[ellipsoid(label.shape, (14, 14, 14), (3, 3, 3))] = 1  # a second, separate blob of class 1
    shell = ellipsoid(label.shape, (10, 10, 10), (4, 4, 4)) & ~ellipsoid(label.shape, (10, 10, 10), (2, 2, 2))
    label[shell & (label == 0)] = 2  # a hollow sphere: Euler characteristic 2 (one component, one cavity)
    comps, euler = topology(label, 3)
    assert comps[0] == 2 and euler[0] == 2  # two balls: 1 + 1
    assert comps[1] == 1 and euler[1] == 2
    assert adjacent_pairs(label) >= {(0, 1), (0, 2)}
    # a map where class 1 touches class 2 directly, which never happens in the "real" nested-free maps
    touching = np.zeros((8, 8, 8), dtype=np.int64)
    touching[:4] = 1
    touching[4:] = 2
    apart = np.zeros((8, 8, 8), dtype=np.int64)
    apart[:3] = 1
    apart[5:] = 2
    assert adjacent_pairs(touching) == {(1, 2)} and adjacent_pairs(apart) == {(0, 1), (0, 2)}
    result = evaluate(maps(touching), maps(apart, apart), [], NAMES)
    assert result["adjacency"]["violations"] == {"a|b": 1.0}
    assert sorted(result["adjacency"]["missing"]) == ["background|a", "background|b"]


def test_cli_writes_json_and_markdown_with_control(tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    real, fake, train = tmp_path / "real", tmp_path / "fake", tmp_path / "train"
    for i, s in enumerate((0.8, 0.9, 1.0)):
        save_nifti(real / f"r{i}.nii.gz", two_class_map(s), affine)
        save_nifti(train / f"t{i}.nii.gz", two_class_map(s, 1), affine)
    requested = [100.0, 200.0, 300.0]
    entries = []
    for i, (s, req) in enumerate(zip((0.7, 0.85, 1.05), requested)):
        save_nifti(fake / f"map{i:04d}.nii.gz", two_class_map(s), affine)
        entries.append({"id": f"map{i:04d}", "requested": {"a": req}})
    write_run_record(fake / "labels_run.json", {"tool": "generate_labels", "class_names": NAMES, "maps": entries})
    out = tmp_path / "report" / "labels.json"
    assert main(["--fake", str(fake), "--real", str(real), "--train", str(train), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    control = report["results"]["control"]
    achieved = [class_volumes(two_class_map(s), VOXEL_ML, 3)[0] for s in (0.7, 0.85, 1.05)]
    assert control["mae_ml"] == pytest.approx(np.mean(np.abs(np.array(requested) - achieved)))
    assert control["per_attribute"]["a"]["spearman"] == pytest.approx(1.0)  # larger request, larger map
    md = out.with_suffix(".md").read_text()
    assert "volume W1" in md and "control: volume MAE" in md and "incoherent maps: generated" in md
    assert report["results"]["coherence"]["incoherent_share"] == 0.0
    # existing report: refused without --overwrite, replaced with it; a foreign file is never replaced
    assert main(["--fake", str(fake), "--real", str(real), "--out", str(out)]) == 2
    assert main(["--fake", str(fake), "--real", str(real), "--out", str(out), "--overwrite"]) == 0
    foreign = tmp_path / "foreign.json"
    foreign.write_text("{}")
    assert main(["--fake", str(fake), "--real", str(real), "--out", str(foreign), "--overwrite"]) == 2
    # class names are needed when no run record names them; bad label values are refused
    assert main(["--fake", str(real), "--real", str(real), "--out", str(tmp_path / "x.json")]) == 2
    save_nifti(real / "bad.nii.gz", np.full((24, 24, 24), 7, dtype=np.int16), affine)
    assert main(["--fake", str(fake), "--real", str(real), "--out", str(tmp_path / "y.json")]) == 2
