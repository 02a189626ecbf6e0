"""Sparse label ids end to end: a TotalSegmentator-style folder -> inspect_dataset (names from the class masks) ->
both stages and the labels stage trained on the compacted table -> generate, generate_labels and generate_pairs,
whose label maps come back in the folder's own ids (0, 5, 51, 117), never the class indices 0-3.

Tiny and seeded (16^3 blocks, a few steps per stage). The label autoencoder gets enough steps to reconstruct the
liver and the heart, so that a ``--like`` map in the user's ids (the test split exported by ``--export-real``)
comes back as non-background ids in the same place: an all-background output would pass any "only the original
ids" check.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from evaluation import class_intensity, label_metrics
from scripts import generate, generate_labels, generate_pairs
from scripts.inspect_dataset import main as inspect_main
from tests.scripts.own_data import SPARSE_IDS, SPARSE_NAMES, write_sparse_ct_folder
from tests.train.helpers import run_entry

PLAIN_TABLE = [[v, k] for k, v in enumerate(SPARSE_IDS)]  # the table as a checkpoint / run record stores it


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


def _values(path: Path) -> set[int]:
    return {int(v) for v in np.unique(_array(path))}


def _stored_table(ckpt: Path) -> object:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["data_info"]["label_table"]


@pytest.mark.slow  # four tiny trainings and four generation runs (about a minute on one core)
def test_sparse_ids_round_trip_through_training_and_generation(tmp_path: Path) -> None:
    data = tmp_path / "ts"
    write_sparse_ct_folder(data, n_cases=6, masks_of="case00")
    cfg_dir = tmp_path / "my_configs"
    (cfg_dir / "dataset").mkdir(parents=True)
    argv = [str(data), "--name", "ts", "--out", str(cfg_dir / "dataset" / "ts.yaml"), "--multiple", "16", "16", "16",
            "--names", str(data / "case00" / "segmentations")]  # fmt: skip
    assert inspect_main(argv) == 0
    cfg = yaml.safe_load((cfg_dir / "dataset" / "ts.yaml").read_text())
    assert cfg["label_nc"] == 4 and cfg["class_names"][1:] == list(SPARSE_NAMES.values())
    assert cfg["block_size"] == [16, 16, 16]

    common = [f"hydra.searchpath=[file://{cfg_dir}]", "dataset=ts", "logger=csv", "trainer.enable_progress_bar=false",
              "trainer.check_val_every_n_epoch=1", "seed=1"]  # fmt: skip
    runs = {name: tmp_path / "runs" / name for name in ("vq", "diff", "ae", "labels")}
    few = "trainer.max_steps=2"
    run_entry("train_vqgan", [*common, few, "experiment=nifti_pairs_vqgan_cpu", f"paths.output_dir={runs['vq']}"])
    vq = runs["vq"] / "checkpoints" / "last.ckpt"
    run_entry("train_diffusion", [*common, few, "experiment=nifti_pairs_diffusion_cpu", "model.latent_stats_batches=1",
                                  f"model.first_stage_ckpt={vq}", f"paths.output_dir={runs['diff']}"])  # fmt: skip
    # 60 steps (4 training maps, 2 per batch: 30 epochs, validated once at the end): liver and heart reconstruct
    run_entry("train_label_ae", [*common, "trainer.max_steps=60", "trainer.check_val_every_n_epoch=30", "trainer=cpu",
                                 "model=label_ae_tiny", f"paths.output_dir={runs['ae']}"])  # fmt: skip
    ae = runs["ae"] / "checkpoints" / "last.ckpt"
    labels = ["trainer=cpu", "model=label_diffusion_tiny", "model.stats_batches=1", f"model.label_ae_ckpt={ae}"]
    run_entry("train_label_diffusion", [*common, few, *labels, f"paths.output_dir={runs['labels']}"])
    image_ckpt = runs["diff"] / "checkpoints" / "last.ckpt"
    label_ckpt = runs["labels"] / "checkpoints" / "last.ckpt"
    for ckpt in (image_ckpt, ae, label_ckpt):  # the table's contents, not the path of the file it came from
        assert _stored_table(ckpt) == {"name": "ts", "classes": cfg["class_names"], "remap": PLAIN_TABLE}, ckpt
    (cfg_dir / "dataset" / "ts_labels.yaml").unlink()  # generation needs the checkpoints only

    # an image for a label map in the folder's own ids, and for the test split the checkpoint rebuilds
    fast = ["--steps", "2", "--device", "cpu"]
    out = tmp_path / "images"
    assert generate.main(["--ckpt", str(image_ckpt), "--labels", str(data / "labels" / "case01.nii.gz"),
                          "--out", str(out), *fast]) == 0  # fmt: skip
    assert json.loads((out / "generation.json").read_text())["label_table"]["remap"] == PLAIN_TABLE
    assert (out / "case01_s0.nii.gz").is_file()
    # the test split the checkpoint rebuilds, its real label maps exported in the folder's ids
    real = tmp_path / "real"
    assert generate.main(["--ckpt", str(image_ckpt), "--labels", "split=test", "--out", str(out / "t"),
                          "--export-real", str(real), *fast]) == 0  # fmt: skip
    (exported,) = sorted((real / "labels").glob("*.nii.gz"))
    assert _values(exported) == set(SPARSE_IDS), _values(exported)
    assert json.loads((real / "generation.json").read_text())["label_table"]["remap"] == PLAIN_TABLE

    # new label maps come back in the folder's ids
    maps = tmp_path / "maps"
    assert generate_labels.main(["--ckpt", str(label_ckpt), "--out", str(maps), "--num-samples", "2", *fast]) == 0
    record = json.loads((maps / "labels_run.json").read_text())
    assert record["label_table"]["remap"] == PLAIN_TABLE
    assert record["class_names"][1:] == list(SPARSE_NAMES.values())
    for name in record["outputs"]:
        values = _values(maps / name)
        assert values <= set(SPARSE_IDS) and values - {0}, (name, values)
    # a map in the user's ids (the exported test map, on the training grid) comes back in those ids, in its place
    like = tmp_path / "like"
    assert generate_labels.main(["--ckpt", str(label_ckpt), "--out", str(like), "--like", str(exported),
                                 "--strength", "0.1", "--steps", "10", "--device", "cpu"]) == 0  # fmt: skip
    (name,) = json.loads((like / "labels_run.json").read_text())["outputs"]
    varied, source = _array(like / name), _array(exported)
    assert set(np.unique(varied).tolist()) - {0} >= {5, 51}, np.unique(varied)  # liver and heart, as ids
    assert set(np.unique(varied).tolist()) <= set(SPARSE_IDS)
    for value in (5, 51):  # under each written id lies mostly that id in the source, not another class's
        under = np.bincount(source[varied == value], minlength=118)
        assert int(under[1:].argmax()) + 1 == value, (value, np.flatnonzero(under), under[np.flatnonzero(under)])

    # the evaluation reads both folders through their recorded tables and names the classes
    report = tmp_path / "metrics"
    assert label_metrics.main(["--fake", str(maps), "--real", str(real / "labels"), "--out",
                               str(report / "labels.json")]) == 0  # fmt: skip
    assert json.loads((report / "labels.json").read_text())["class_names"] == cfg["class_names"]
    assert class_intensity.main(["--real", str(real), "--fake", str(out / "t"), "--labels", str(real / "labels"),
                                 "--out", str(report / "ci.json")]) == 0  # fmt: skip
    assert set(json.loads((report / "ci.json").read_text())["classes"]) == set(cfg["class_names"])

    # the pair path: labels in the folder's ids, read again through the image model's table
    pairs = tmp_path / "pairs"
    assert generate_pairs.main(["--label-ckpt", str(label_ckpt), "--image-ckpt", str(image_ckpt), "--out", str(pairs),
                                "--num-samples", "1", "--label-steps", "2", "--image-steps", "2",
                                "--device", "cpu"]) == 0  # fmt: skip
    values = _values(pairs / "labels" / "map0000.nii.gz")
    assert values <= set(SPARSE_IDS) and values - {0}, values
    assert json.loads((pairs / "labels" / "labels_run.json").read_text())["label_table"]["remap"] == PLAIN_TABLE
    assert json.loads((pairs / "images" / "generation.json").read_text())["label_table"]["remap"] == PLAIN_TABLE
    assert (pairs / "images" / "map0000_s0.nii.gz").is_file()
