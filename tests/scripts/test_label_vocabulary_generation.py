"""Generation speaks the user's ids: label maps read through the checkpoint's label table, outputs written back.

The tiny checkpoints (synthetic data, 4 classes) are copied with a label table added to their plain data info, as
training on ``dataset=nifti_pairs`` with ``label_table`` stores it: the classes are stored as ids 0, 5, 51, 117.
The full path through training is ``test_label_vocabulary_e2e.py`` (slow).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.nifti import save_nifti
from scripts import generate_labels, generate_pairs
from tests.scripts.own_data import SPARSE_IDS
from tests.scripts.test_generate import EXIT_ERROR, cli
from tests.tiny_checkpoints import TinyLabelModel, TinyModel

REMAP = [[int(v), k] for k, v in enumerate(SPARSE_IDS)]


def _with_table(src: Path, dst: Path) -> Path:
    """A copy of checkpoint ``src`` whose data info carries the sparse-id label table (its own class names)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    info = ckpt["hyper_parameters"]["data_info"]
    names = ckpt["hyper_parameters"].get("class_names") or info["class_names"]
    info["label_table"] = {"name": "sparse", "classes": list(names), "remap": REMAP}
    torch.save(ckpt, dst)
    return dst


def _sparse_map(path: Path, shape: tuple[int, int, int] = (16, 16, 16), extra: int | None = None) -> Path:
    label = np.zeros(shape, dtype=np.int16)
    for k, value in enumerate(SPARSE_IDS[1:], start=1):
        label[2 * k : 16 - 2 * k, 2 * k : 16 - 2 * k, 2 * k : 16 - 2 * k] = value
    if extra is not None:
        label[0, 0, 0] = extra
    save_nifti(path, label, np.diag([1.5, 1.5, 2.0, 1.0]), dtype=np.int16)
    return path


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_generate_reads_maps_through_the_table_and_refuses_an_unknown_id(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _with_table(tiny_model.diffusion, tmp_path / "sparse.ckpt")
    labels = _sparse_map(tmp_path / "maps" / "subject.nii.gz")
    out = tmp_path / "out"
    assert cli(tiny_model, labels, out, "--png", ckpt=ckpt) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["label_table"]["remap"] == REMAP and (out / "subject_s0.png").is_file()
    # without the table the same file is refused: 117 is no class id of a 4-class model
    assert cli(tiny_model, labels, tmp_path / "plain") == EXIT_ERROR
    caplog.clear()
    bad = _sparse_map(tmp_path / "bad" / "subject.nii.gz", extra=63)
    assert cli(tiny_model, bad, tmp_path / "out_bad", ckpt=ckpt) == EXIT_ERROR
    errors = _errors(caplog)
    assert len(errors) == 1 and "subject.nii.gz" in errors[0] and "[63]" in errors[0], errors
    assert not (tmp_path / "out_bad").exists()


def test_generated_label_maps_are_written_back_in_the_users_ids(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _with_table(tiny_label_model.label_diffusion, tmp_path / "labels.ckpt")
    out = tmp_path / "gen"
    assert generate_labels.main(["--ckpt", str(ckpt), "--out", str(out), "--num-samples", "2", "--steps", "2"]) == 0
    record = json.loads((out / "labels_run.json").read_text())
    assert record["label_table"]["remap"] == REMAP
    import nibabel as nib

    for name in record["outputs"]:
        values = set(np.unique(np.asarray(nib.load(str(out / name)).dataobj)).tolist())
        assert values <= set(SPARSE_IDS) and values - {0}, values  # ids, never the class indices 1, 2, 3
    # label_metrics reads generated and real maps through the record's table
    from evaluation import label_metrics

    _sparse_map(tmp_path / "real" / "r0.nii.gz")
    _sparse_map(tmp_path / "real" / "r1.nii.gz")
    report = tmp_path / "metrics" / "labels.json"
    assert label_metrics.main(["--fake", str(out), "--real", str(tmp_path / "real"), "--out", str(report)]) == 0
    assert json.loads(report.read_text())["class_names"] == record["class_names"]
    # --like in the user's ids; an id the table lacks is refused before any sampling
    like = _sparse_map(tmp_path / "like.nii.gz")
    args = ["--ckpt", str(ckpt), "--steps", "2", "--like", str(like), "--strength", "0.5"]
    assert generate_labels.main([*args, "--out", str(tmp_path / "like_out")]) == 0
    caplog.clear()
    bad = _sparse_map(tmp_path / "bad.nii.gz", extra=7)
    assert generate_labels.main([*args[:-4], "--like", str(bad), "--out", str(tmp_path / "x")]) == EXIT_ERROR
    assert "bad.nii.gz" in _errors(caplog)[0] and "[7]" in _errors(caplog)[0]
    # pairs: both checkpoints must read the maps through one table
    pairs = ["--label-ckpt", str(ckpt), "--num-samples", "1", "--label-steps", "2", "--image-steps", "2"]
    image = _with_table(tiny_model.diffusion, tmp_path / "image.ckpt")
    assert generate_pairs.main([*pairs, "--image-ckpt", str(image), "--out", str(tmp_path / "pairs")]) == 0
    assert (tmp_path / "pairs" / "images" / "map0000_s0.nii.gz").is_file()
    caplog.clear()
    mismatch = ["--image-ckpt", str(tiny_model.diffusion), "--out", str(tmp_path / "p2")]
    assert generate_pairs.main([*pairs, *mismatch]) == EXIT_ERROR
    assert "label table" in _errors(caplog)[0]


def test_export_real_writes_the_users_ids_and_the_evaluation_reads_them(tiny_model: TinyModel, tmp_path: Path) -> None:
    from evaluation import class_intensity

    ckpt = _with_table(tiny_model.diffusion, tmp_path / "sparse.ckpt")
    fake, real = tmp_path / "fake", tmp_path / "real"
    assert cli(tiny_model, "split=test", fake, "--export-real", str(real), ckpt=ckpt) == 0
    import nibabel as nib

    exported = sorted((real / "labels").glob("*.nii.gz"))
    values = set().union(*(np.unique(np.asarray(nib.load(str(p)).dataobj)).tolist() for p in exported))
    assert values <= set(SPARSE_IDS) and values - {0}, values  # as the user's own files, not 0..3
    assert json.loads((real / "generation.json").read_text())["label_table"]["remap"] == REMAP
    # class_intensity reads them through the recorded table and names the rows from it
    out = tmp_path / "ci.json"
    argv = ["--real", str(real), "--fake", str(fake), "--labels", str(real / "labels"), "--out", str(out)]
    assert class_intensity.main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report["classes"]) > 1 and set(report["classes"]) <= set(report["label_table"]["classes"])
