"""scripts/inspect_dataset.py: one pass over a folder, per-file report, a dataset config that loads the data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate

from dataset.nifti_pairs import NiftiPairsDataset
from scripts.inspect_dataset import main
from tests.dataset.fakes import oblique_affine, write_nifti
from tests.scripts.own_data import SHAPES, ZOOMS, write_own_ct_folder, write_sparse_ct_folder
from tests.train.helpers import compose_config


def test_ct_folder_gives_a_config_that_loads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mine"
    ids = write_own_ct_folder(root, n_cases=5)
    assert main([str(root), "--name", "mydata"]) == 0
    text = capsys.readouterr().out
    for sid in ids:  # one report line per file
        assert f"#   {sid} |" in text
    cfg = yaml.safe_load(text)
    # known answers: the largest (I, J, K) is (15, 13, 11) -> (D, H, W) (11, 15, 13) -> multiples of 4, 8, 8
    assert max(s[0] for s in SHAPES) == 15 and cfg["block_size"] == [12, 16, 16]
    assert cfg["voxel_size"] == [ZOOMS[2], ZOOMS[0], ZOOMS[1]]  # (D, H, W) = (K, I, J)
    assert (cfg["label_nc"], cfg["modality"]) == (4, "ct")
    assert cfg["class_names"] == ["background", "class_1", "class_2", "class_3"]
    assert cfg["intensity"] == {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0}
    assert "5 of 5 volumes have voxels outside the window" in text  # the bone at 1500 HU is reported
    # the config is a dataset config: put it in a config folder of one's own, compose, load every split
    (tmp_path / "my_configs" / "dataset").mkdir(parents=True)
    (tmp_path / "my_configs" / "dataset" / "mydata.yaml").write_text(text)
    composed = compose_config("vqgan", ["dataset=mydata", f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"])
    node = composed.dataset.datamodule.dataset
    ds = NiftiPairsDataset(
        split="all", root=node.root, label_nc=node.label_nc, intensity=node.intensity, block_size=node.block_size
    )
    sample = ds[0]
    assert tuple(sample["image"].shape) == (1, 12, 16, 16)
    assert float(sample["image"].min()) >= -1.0 and float(sample["image"].max()) <= 1.0


def test_mr_and_normalised_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for kind, scale, offset in (("mr", 400.0, 50.0), ("norm", 1.0, 0.0)):
        for i in range(2):
            img = rng.random((9, 10, 7)) * scale + offset
            if kind == "norm":
                img = img * 2 - 1
            affine = oblique_affine(zooms=(0.9, 1.3, 2.5 + i))  # the two files differ in voxel size
            write_nifti(tmp_path / kind / "images" / f"s{i}.nii", img.astype(np.float32), affine)
            write_nifti(tmp_path / kind / "labels" / f"s{i}.nii", (img > img.mean()).astype(np.uint8), affine)
    assert main([str(tmp_path / "mr"), "--multiple", "4", "32", "32"]) == 0
    mr_text = capsys.readouterr().out
    mr = yaml.safe_load(mr_text)
    assert mr["intensity"] == {"kind": "percentile", "lower": 0.5, "upper": 99.5} and mr["modality"] == "mr"
    assert mr["block_size"] == [8, 32, 32] and mr["name"] == "nifti_pairs"
    assert "my_configs/dataset/mr.yaml" in mr_text  # the config's file name defaults to the folder's
    assert mr["voxel_size"] is None  # files differ: no common voxel size, and the report says so
    assert "# WARNING: voxel sizes differ between files" in mr_text
    assert main([str(tmp_path / "norm")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["intensity"] is None


def test_mismatched_pair_is_refused_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bad"
    write_own_ct_folder(root, n_cases=3)
    label = nib.load(str(root / "labels" / "case01.nii.gz"))
    write_nifti(root / "labels" / "case01.nii.gz", np.asarray(label.dataobj)[:, :, :-1], label.affine)
    out = tmp_path / "cfg.yaml"
    assert main([str(root), "--out", str(out)]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "case01" in errors[0].getMessage() and "shape" in errors[0].getMessage()
    assert not out.exists()  # nothing written


def test_out_file_needs_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_own_ct_folder(root, n_cases=2)
    out = tmp_path / "cfg.yaml"
    assert main([str(root), "--out", str(out), "--max-block", "8", "8", "8"]) == 0
    assert yaml.safe_load(out.read_text())["block_size"] == [8, 8, 8]
    assert "centre-cropped" in out.read_text()
    assert main([str(root), "--out", str(out)]) == 2
    assert main([str(root), "--out", str(out), "--overwrite"]) == 0


def test_sparse_ids_get_a_compacted_named_table_beside_the_config(tmp_path: Path) -> None:
    root = tmp_path / "ts"
    write_sparse_ct_folder(root, n_cases=4, masks_of="case02")  # ids 0, 5, 51, 117 + one subject's class masks
    cfg_dir = tmp_path / "my_configs" / "dataset"
    cfg_dir.mkdir(parents=True)
    argv = [
        str(root),
        "--name",
        "ts",
        "--out",
        str(cfg_dir / "ts.yaml"),
        "--names",
        str(root / "case02" / "segmentations"),
    ]
    assert main(argv) == 0
    cfg = yaml.safe_load((cfg_dir / "ts.yaml").read_text())
    table = yaml.safe_load((cfg_dir / "ts_labels.yaml").read_text())
    assert cfg["label_nc"] == 4 and cfg["label_table"] == str(cfg_dir / "ts_labels.yaml")  # 4 classes, not 118
    assert cfg["class_names"] == table["classes"] == ["background", "liver", "heart", "costal_cartilages"]
    assert table["remap"] == {0: "background", 5: "liver", 51: "heart", 117: "costal_cartilages"}
    composed = compose_config("vqgan", ["dataset=ts", f"hydra.searchpath=[file://{cfg_dir.parent}]"])
    ds = instantiate(composed.dataset.datamodule.dataset)(split="all")
    assert sorted(torch.cat([ds[i]["label"].flatten() for i in range(len(ds))]).unique().tolist()) == [0, 1, 2, 3]
    names = tmp_path / "names.json"
    names.write_text('{"5": "liver"}')
    assert main([str(root), "--names", str(names), "--out", str(tmp_path / "x.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "ts_labels.yaml").read_text())["classes"][1:] == [
        "liver",
        "class_51",
        "class_117",
    ]
