"""Evaluation of a model trained with a label table: maps in the user's ids (0, 5, 51, 117) are read through the
table recorded beside them, and the reports and montages name the classes.

The same maps are also written in class ids (0-3) without a table: every number must be the same both ways, so a
table that were ignored or misapplied shows as a refusal or a different number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset import DataError
from dataset.files import write_run_record
from dataset.label_table import recorded_label_table
from dataset.nifti import save_nifti
from evaluation import class_intensity, label_metrics
from tests.scripts.own_data import SPARSE_IDS

NAMES = ["background", "liver", "heart", "costal_cartilages"]
PLAIN = {"name": "ts", "classes": NAMES, "remap": [[v, k] for k, v in enumerate(SPARSE_IDS)]}
IDS = np.array(SPARSE_IDS)


def _maps(n: int, seed: int) -> list[np.ndarray]:
    """n (16, 16, 16) class-id maps (0-3): three boxes of seeded size."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = np.zeros((16, 16, 16), dtype=np.int64)
        for k in (1, 2, 3):
            lo, size = rng.integers(1, 6, 3), rng.integers(3, 8, 3)
            label[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], 3 * k : 3 * k + size[2]] = k
        out.append(label)
    return out


def _write(folder: Path, maps: list[np.ndarray], sparse: bool, record: str | None, suffix: str = "") -> list[str]:
    names = []
    for i, label in enumerate(maps):
        names.append(f"m{i}{suffix}.nii.gz")
        save_nifti(folder / names[-1], IDS[label] if sparse else label, np.eye(4), dtype=np.int16)
    if record is not None:
        write_run_record(folder / record, {"label_table": PLAIN if sparse else None, "class_names": NAMES,
                                           "outputs": names})  # fmt: skip
    return names


def test_recorded_table_of_a_folder_its_export_parent_and_disagreeing_folders(tmp_path: Path) -> None:
    assert recorded_label_table(tmp_path, None) is None  # no record: class ids
    write_run_record(tmp_path / "gen" / "labels_run.json", {"label_table": PLAIN, "outputs": ["a.nii.gz"]})
    assert recorded_label_table(tmp_path / "gen").remap == {0: 0, 5: 1, 51: 2, 117: 3}
    # generate --export-real DIR records DIR/labels/* in DIR/generation.json
    write_run_record(tmp_path / "real" / "generation.json", {"label_table": PLAIN, "outputs": ["labels/a.nii.gz"]})
    assert recorded_label_table(tmp_path / "real" / "labels").class_names == tuple(NAMES)
    write_run_record(tmp_path / "other" / "generation.json", {"label_table": PLAIN, "outputs": ["images/a.nii.gz"]})
    assert recorded_label_table(tmp_path / "other" / "labels") is None  # the parent's record is about other files
    merged = dict(PLAIN, classes=NAMES[:3], remap=[[0, 0], [5, 1], [51, 1], [117, 2]])
    write_run_record(tmp_path / "m" / "generation.json", {"label_table": merged, "outputs": ["x.nii.gz"]})
    with pytest.raises(DataError, match="different label tables"):
        recorded_label_table(tmp_path / "gen", tmp_path / "m")


def _intensity_case(root: Path, sparse: bool) -> None:
    rng = np.random.default_rng(1)
    (label,) = _maps(1, seed=3)
    real = np.array([-1000.0, 55.0, 30.0, 200.0])[label] + rng.normal(0, 3, label.shape)
    fake = np.array([-990.0, 70.0, 30.0, 150.0])[label] + rng.normal(0, 3, label.shape)
    save_nifti(root / "real" / "m0.nii.gz", real.astype(np.float32), np.eye(4))
    save_nifti(root / "fake" / "m0_s0.nii.gz", fake.astype(np.float32), np.eye(4))
    _write(root / "labels", [label], sparse, None)
    if sparse:  # generate.py's record of the synthetic folder holds the model's table
        write_run_record(root / "fake" / "generation.json", {"label_table": PLAIN, "outputs": ["m0_s0.nii.gz"]})


def test_class_intensity_reads_user_ids_through_the_recorded_table(tmp_path: Path) -> None:
    _intensity_case(tmp_path / "ids", sparse=False)
    _intensity_case(tmp_path / "sparse", sparse=True)
    reports = {}
    for kind, names in (("ids", NAMES), ("sparse", None)):  # names: from the table when not given
        root = tmp_path / kind
        argv = ["--real", str(root / "real"), "--fake", str(root / "fake"), "--labels", str(root / "labels"),
                "--out", str(root / "ci.json"), *(["--class-names", *names] if names else [])]  # fmt: skip
        assert class_intensity.main(argv) == 0
        reports[kind] = json.loads((root / "ci.json").read_text())
    assert reports["sparse"]["classes"] == reports["ids"]["classes"]
    assert list(reports["sparse"]["classes"]) == NAMES  # rows named by the table, not class_5 ...
    assert reports["sparse"]["classes"]["costal_cartilages"]["median_difference"] == pytest.approx(-50.0, abs=2)
    assert reports["sparse"]["label_table"] == PLAIN
    assert "| heart |" in (tmp_path / "sparse" / "ci.md").read_text()
    # without the record the user's ids are refused (117 is no class id), named
    (tmp_path / "sparse" / "fake" / "generation.json").unlink()
    root = tmp_path / "sparse"
    argv = ["--real", str(root / "real"), "--fake", str(root / "fake"), "--labels", str(root / "labels"),
            "--class-names", *NAMES, "--out", str(tmp_path / "x.json")]  # fmt: skip
    assert class_intensity.main(argv) == 2


def _segmenter(path: Path) -> Path:
    """A tiny segmenter briefly trained on class-id maps (what segmentation.py train writes)."""
    import torch

    from evaluation.intensity import IntensityRange
    from evaluation.segmenter import SegConfig, load_cases, save_checkpoint, train_segmenter

    maps = _maps(2, seed=5)
    _write(path.parent / "train" / "labels", maps, sparse=False, record=None)
    for i, label in enumerate(maps):
        save_nifti(path.parent / "train" / "images" / f"m{i}.nii.gz", _image(label), np.eye(4))
    cases = load_cases(path.parent / "train" / "images", path.parent / "train" / "labels", 4, IntensityRange(-1, 1))
    torch.manual_seed(0)
    net, info = train_segmenter(cases, SegConfig(num_classes=4, channels=(8, 16), steps=4, lr=1e-2, seed=0),
                                progress=False)  # fmt: skip
    save_checkpoint(path, net, SegConfig(num_classes=4, channels=(8, 16), steps=4, lr=1e-2, seed=0), info)
    return path


def _image(label: np.ndarray) -> np.ndarray:
    return np.array([-1.0, 0.2, 0.6, -0.4], dtype=np.float32)[label]


def test_label_metrics_with_adherence_reads_user_ids_through_the_recorded_table(tmp_path: Path) -> None:
    seg = _segmenter(tmp_path / "seg" / "seg.pt")
    fake, real = _maps(3, seed=7), _maps(3, seed=8)
    reports = {}
    for kind in ("ids", "sparse"):
        root = tmp_path / kind
        sparse = kind == "sparse"
        names = _write(root / "fake", fake, sparse, "labels_run.json")
        _write(root / "real", real, sparse, None)
        for name, label in zip(names, fake):  # the images generated from the maps (<id>_s0)
            save_nifti(root / "fake_images" / name.replace(".nii.gz", "_s0.nii.gz"), _image(label), np.eye(4))
        argv = ["--fake", str(root / "fake"), "--real", str(root / "real"), "--out", str(root / "labels.json"),
                "--segmenter", str(seg), "--fake-images", str(root / "fake_images"),
                "--data-range", "-1", "1"]  # fmt: skip
        assert label_metrics.main(argv) == 0, kind
        reports[kind] = json.loads((root / "labels.json").read_text())
    assert reports["sparse"]["class_names"] == NAMES
    assert reports["sparse"]["results"] == reports["ids"]["results"]  # the same classes, read both ways
    assert set(reports["sparse"]["results"]["adherence"]["fake"]["per_class"]) >= set(NAMES[1:])


def test_pair_montage_reads_the_labels_through_their_record(tmp_path: Path) -> None:
    from dataset.visualization import pair_montages

    (label,) = _maps(1, seed=2)
    _write(tmp_path / "pairs" / "labels", [label], sparse=True, record="labels_run.json")
    save_nifti(tmp_path / "pairs" / "images" / "m0_s0.nii.gz", _image(label), np.eye(4))
    assert pair_montages(tmp_path / "pairs", tmp_path / "report", NAMES) == ["![m0](pair_m0_montage.png)"]
    assert (tmp_path / "report" / "pair_m0_montage.png").is_file()
    with pytest.raises(DataError, match="label table of 4 classes, 3 names"):
        pair_montages(tmp_path / "pairs", tmp_path / "report2", NAMES[:3])
    (tmp_path / "pairs" / "labels" / "labels_run.json").unlink()  # ids 5..117 are no colours of a 4-class legend
    with pytest.raises(DataError, match="117"):
        pair_montages(tmp_path / "pairs", tmp_path / "report3", NAMES)


def test_utility_reads_user_ids_through_the_table_recorded_beside_the_new_pairs(tmp_path: Path) -> None:
    from dataset.nifti import load_label
    from evaluation import utility
    from tests.evaluation.conftest import export_phantoms

    reports = {}
    for kind in ("ids", "sparse"):
        root = tmp_path / kind
        export_phantoms("train", root / "train", 2)
        export_phantoms("train", root / "synth", 2, "_s0")
        export_phantoms("val", root / "new", 2, "_s0", seed=5)
        export_phantoms("test", root / "test", 1)
        if kind == "sparse":  # every label folder in the user's ids; generate_pairs records the table
            for path in root.glob("*/labels/*.nii.gz"):
                label, affine = load_label(path, len(NAMES))
                save_nifti(path, IDS[label], affine, dtype=np.int16, overwrite=True)
            write_run_record(root / "new" / "labels" / "labels_run.json", {"label_table": PLAIN, "outputs": []})
        out = root / "utility.json"
        argv = ["--train-images", str(root / "train" / "images"), "--train-labels", str(root / "train" / "labels"),
                "--test-images", str(root / "test" / "images"), "--test-labels", str(root / "test" / "labels"),
                "--synth-images", str(root / "synth" / "images"), "--new-images", str(root / "new" / "images"),
                "--new-labels", str(root / "new" / "labels"), "--class-names", *NAMES, "--data-range", "-1", "1",
                "--regimes", "1", "--seeds", "0", "--steps", "1", "--out", str(out)]  # fmt: skip
        assert utility.main(argv) == 0, kind
        reports[kind] = json.loads(out.read_text())["results"]
    assert reports["sparse"] == reports["ids"]


def test_segmenter_cases_read_an_exported_split_through_its_recorded_table(tmp_path: Path) -> None:
    """segmentation.py and segmenter_curve load through load_cases: a split exported in the user's ids reads back
    as the class ids a segmenter predicts; the same maps without the record are refused, naming the value."""
    from evaluation.intensity import IntensityRange
    from evaluation.segmenter import load_cases

    maps = _maps(2, seed=4)
    names = _write(tmp_path / "real" / "labels", maps, sparse=True, record=None)
    for name, label in zip(names, maps):
        save_nifti(tmp_path / "real" / name, _image(label), np.eye(4))
    write_run_record(tmp_path / "real" / "generation.json", {"label_table": PLAIN,
                     "outputs": [*names, *(f"labels/{n}" for n in names)]})  # fmt: skip
    cases = load_cases(tmp_path / "real", tmp_path / "real" / "labels", 4, IntensityRange(-1, 1))
    for case, label in zip(cases, maps):
        np.testing.assert_array_equal(case.label[0].numpy(), label)
    with pytest.raises(ValueError, match="has 4 classes, the segmenter 3"):
        load_cases(tmp_path / "real", tmp_path / "real" / "labels", 3, IntensityRange(-1, 1))
    (tmp_path / "real" / "generation.json").unlink()
    with pytest.raises(DataError, match="117"):
        load_cases(tmp_path / "real", tmp_path / "real" / "labels", 4, IntensityRange(-1, 1))
