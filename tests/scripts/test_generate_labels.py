"""scripts/generate_labels.py: maps, affine, run record, seeds, --like, --repair, bad input and overwrite rules."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dataset.nifti import load_label, save_nifti, voxel_size_dhw
from scripts.generate_labels import default_affine, main, parse_condition, repair
from tests.tiny_checkpoints import TinyLabelModel


def run(model: TinyLabelModel, out: Path, *extra: str) -> int:
    return main(["--ckpt", str(model.label_diffusion), "--out", str(out), *extra])


def test_maps_record_and_seed(tiny_label_model: TinyLabelModel, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert run(tiny_label_model, out, "--num-samples", "3", "--seed", "5", "--condition", "outer=900,inner=40") == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["labels_run.json", "map0000.nii.gz", "map0001.nii.gz", "map0002.nii.gz"]
    img = nib.load(str(out / "map0000.nii.gz"))
    assert np.issubdtype(img.get_data_dtype(), np.integer)
    label, affine = load_label(out / "map0000.nii.gz", 4)
    assert label.shape == (16, 16, 16)
    # the synthetic dataset's voxel (D, H, W) = (2.0, 1.5, 1.5) mm, learnt from the training affines
    assert voxel_size_dhw(affine) == pytest.approx((2.0, 1.5, 1.5))
    assert np.allclose(affine, default_affine((2.0, 1.5, 1.5), (16, 16, 16)))
    record = json.loads((out / "labels_run.json").read_text())
    ckpt_sha = __import__("hashlib").sha256(tiny_label_model.label_diffusion.read_bytes()).hexdigest()
    assert record["checkpoint_sha256"] == ckpt_sha and record["seed"] == 5
    assert record["settings"]["repair"] is False
    assert record["attribute_names"][:3] == ["outer", "middle", "inner"]
    assert "inner.centroid_d" in record["attribute_names"]  # the fixture trains with centroid_classes=[inner]
    first = record["maps"][0]
    assert first["requested"] == {"outer": 900.0, "inner": 40.0}
    # achieved = measured on the written file (voxel volume 2 * 1.5 * 1.5 mm^3 = 0.0045 mL)
    counts = np.bincount(label.ravel(), minlength=4)
    assert first["achieved"]["outer"] == pytest.approx(counts[1] * 0.0045)
    assert sorted(record["outputs"]) == ["map0000.nii.gz", "map0001.nii.gz", "map0002.nii.gz"]
    # same seed, same maps (in a fresh folder), whatever the number of maps
    again = tmp_path / "again"
    assert run(tiny_label_model, again, "--num-samples", "1", "--seed", "5", "--condition", "outer=900,inner=40") == 0
    assert np.array_equal(load_label(again / "map0000.nii.gz")[0], label)


def test_bad_input_exits_2(tiny_label_model: TinyLabelModel, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "bad"
    assert run(tiny_label_model, out, "--condition", "ventricles=3") == 2
    assert "unknown attribute 'ventricles'" in caplog.text
    assert run(tiny_label_model, out, "--condition", "outer") == 2
    assert run(tiny_label_model, out, "--condition", "outer=-3") == 2
    assert run(tiny_label_model, out, "--num-samples", "0") == 2
    assert run(tiny_label_model, out, "--strength", "0.3") == 2  # --strength without --like
    assert main(["--ckpt", str(tiny_label_model.label_ae), "--out", str(out)]) == 2  # a label AE checkpoint
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(out)]) == 2
    wrong = save_nifti(tmp_path / "wrong.nii.gz", np.zeros((8, 8, 8), np.int16), np.diag([1.5, 1.5, 2.0, 1]))
    assert run(tiny_label_model, out, "--like", str(wrong)) == 2
    assert not out.exists() or not any(out.glob("*.nii.gz"))
    assert parse_condition(" a=1, b=2.5 ") == {"a": 1.0, "b": 2.5}
    with pytest.raises(ValueError, match="twice"):
        parse_condition("a=1,a=2")


def test_overwrite_replaces_only_our_previous_outputs(tiny_label_model: TinyLabelModel, tmp_path: Path) -> None:
    out = tmp_path / "ow"
    assert run(tiny_label_model, out, "--num-samples", "3") == 0
    assert run(tiny_label_model, out, "--num-samples", "3") == 2  # exists, no --overwrite
    keep = out / "notes.txt"
    keep.write_text("mine")
    # a smaller run with --overwrite removes exactly the previous set (map0002 too) and nothing else
    assert run(tiny_label_model, out, "--num-samples", "2", "--overwrite", "--seed", "1") == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["map0000.nii.gz", "map0001.nii.gz"]
    assert keep.read_text() == "mine"
    # a same-named file that no record of ours lists is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "map0000.nii.gz").write_bytes(b"not ours")
    assert run(tiny_label_model, other, "--overwrite") == 2
    assert (other / "map0000.nii.gz").read_bytes() == b"not ours"
    assert not list(other.glob(".staging-*"))


def test_like_and_repair(tiny_label_model: TinyLabelModel, tmp_path: Path) -> None:
    src = tmp_path / "src"
    assert run(tiny_label_model, src, "--num-samples", "1") == 0
    out = tmp_path / "like"
    source = src / "map0000.nii.gz"
    assert run(tiny_label_model, out, "--like", str(source), "--strength", "0.5", "--num-samples", "2",
               "--repair", "--condition", "outer=300") == 0  # fmt: skip
    record = json.loads((out / "labels_run.json").read_text())
    assert record["settings"]["repair"] is True and record["settings"]["strength"] == 0.5
    assert [m["id"] for m in record["maps"]] == ["like-map0000-0000", "like-map0000-0001"]
    assert all("repair_changed_voxels" in m for m in record["maps"])
    _, affine = load_label(out / "like-map0000-0000.nii.gz")
    assert np.allclose(affine, load_label(source)[1])  # a variation keeps its source's geometry


def test_repair_known_answer() -> None:
    label = np.zeros((12, 12, 12), dtype=np.int64)
    label[2:8, 2:8, 2:8] = 1
    label[4:6, 4:6, 4:6] = 0  # a background hole inside class 1: filled
    label[10, 10, 10] = 1  # a stray voxel of class 1: removed (takes the nearest remaining label, background)
    label[3, 3, 3] = 2  # class 2 nested in class 1 is left alone
    fixed, changed = repair(label, 3)
    assert fixed[10, 10, 10] == 0 and (fixed[4:6, 4:6, 4:6] == 1).all() and fixed[3, 3, 3] == 2
    assert changed == 1 + 8
    assert torch.is_tensor(torch.from_numpy(fixed))


def test_condition_from_real_maps(tiny_label_model: TinyLabelModel, tmp_path: Path) -> None:
    from dataset.synthetic import SyntheticPhantomDataset

    ds = SyntheticPhantomDataset(num_samples=2, size=(16, 16, 16), label_nc=4, seed=0)
    real = tmp_path / "real"
    for i in range(2):
        save_nifti(real / f"r{i}.nii.gz", ds[i]["label"], ds[i]["affine"])
    out = tmp_path / "cf"
    assert run(tiny_label_model, out, "--num-samples", "3", "--condition-from", str(real),
               "--condition-keys", "outer,inner") == 0  # fmt: skip
    maps = json.loads((out / "labels_run.json").read_text())["maps"]
    counts = [np.bincount(ds[i]["label"].numpy().ravel(), minlength=4) * 0.0045 for i in (0, 1, 0)]  # cycled
    for m, c in zip(maps, counts):
        assert m["requested"] == pytest.approx({"outer": c[1], "inner": c[3]})
    assert run(tiny_label_model, tmp_path / "x", "--condition-from", str(real), "--condition", "outer=1") == 2
    assert run(tiny_label_model, tmp_path / "x", "--condition-from", str(real), "--condition-keys", "nope") == 2
