"""A user's own label vocabulary: sparse ids compacted through a label table, merged ids, unknown ids, names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.contract import DataError
from dataset.label_table import (
    class_names_from_masks,
    load_label_table,
    parse_label_table,
    read_class_names,
    remap_labels,
    render_label_table,
    restore_labels,
    suggest_label_table,
)
from dataset.nifti_pairs import NiftiPairsDataset
from dataset.registry import build_split, label_table_of, plain_data_info
from tests.dataset.fakes import write_nifti
from tests.scripts.own_data import SPARSE_NAMES, write_sparse_ct_folder

CT = {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000}
CLASSES = ["background", "liver", "heart", "costal_cartilages"]


def _table_file(path: Path, remap: str, classes: list[str] = CLASSES) -> Path:
    path.write_text(f"name: mine\nclasses: {json.dumps(classes)}\nremap: {remap}\n")
    return path


def test_suggested_table_compacts_names_and_writes_back(tmp_path: Path) -> None:
    table = suggest_label_table("mine", [117, 5, 0, 51], {5: "liver", 117: "costal_cartilages"})
    assert table.class_names == ("background", "liver", "class_51", "costal_cartilages")
    assert table.remap == {0: 0, 5: 1, 51: 2, 117: 3}
    again = load_label_table(_write(tmp_path / "t.yaml", render_label_table(table, ["a comment"])))
    assert again.class_names == table.class_names and again.remap == table.remap
    assert parse_label_table(table.to_plain()).remap == table.remap  # the checkpoint form reads back the same
    sparse = np.array([[0, 117], [51, 5]])
    np.testing.assert_array_equal(restore_labels(remap_labels(sparse, table, "x"), table), sparse)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_merged_ids_share_a_class_and_write_back_as_the_smallest(tmp_path: Path) -> None:
    table = load_label_table(_table_file(tmp_path / "t.yaml", "{0: 0, 5: liver, 6: liver, 51: heart, 117: 3}"))
    np.testing.assert_array_equal(remap_labels(np.array([0, 5, 6, 51, 117]), table, "x"), [0, 1, 1, 2, 3])
    np.testing.assert_array_equal(restore_labels(np.array([0, 1, 2, 3]), table), [0, 5, 51, 117])
    with pytest.raises(ValueError, match="no source value maps to class"):
        parse_label_table(
            {"name": "t", "classes": ["background", "a", "b"], "remap": [[0, 0], [1, 1]]}
        ).source_values()


def test_dataset_compacts_sparse_ids_and_merges(tmp_path: Path) -> None:
    write_sparse_ct_folder(tmp_path / "d", n_cases=3)
    table = _table_file(tmp_path / "t.yaml", "{0: 0, 5: liver, 51: heart, 117: costal_cartilages}")
    ds = NiftiPairsDataset("all", tmp_path / "d", label_nc=4, intensity=CT, label_table=table, class_names=CLASSES)
    labels = torch.cat([ds[i]["label"].flatten() for i in range(len(ds))])
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]
    merged = _table_file(
        tmp_path / "m.yaml", "{0: 0, 5: organ, 51: organ, 117: cartilage}", ["bg", "organ", "cartilage"]
    )
    ds2 = NiftiPairsDataset("all", tmp_path / "d", label_nc=3, intensity=CT, label_table=merged)
    for i in range(len(ds)):
        expect = ds[i]["label"].clone()
        expect[expect == 2] = 1  # heart merged into the liver's class
        expect[expect == 3] = 2
        assert torch.equal(ds2[i]["label"], expect)


def test_unknown_id_is_refused_naming_file_and_value(tmp_path: Path) -> None:
    ids = write_sparse_ct_folder(tmp_path / "d", n_cases=4)
    table = _table_file(tmp_path / "t.yaml", "{0: 0, 5: liver, 51: heart, 117: costal_cartilages}")
    last = tmp_path / "d" / "labels" / f"{ids[-1]}.nii.gz"
    arr = np.zeros((6, 6, 6), dtype=np.uint8)
    arr[2, 2, 2] = 63  # one voxel of an id the table lacks, in the last file
    write_nifti(last, arr)
    write_nifti(tmp_path / "d" / "images" / f"{ids[-1]}.nii.gz", np.zeros((6, 6, 6), dtype=np.int16))
    with pytest.raises(DataError, match=rf"{ids[-1]}\.nii\.gz: label value\(s\) \[63\] not in the label table"):
        NiftiPairsDataset("all", tmp_path / "d", label_nc=4, intensity=CT, label_table=table)
    with pytest.raises(ValueError, match="label table 'mine' has 4 classes"):  # the config must be the table's
        NiftiPairsDataset("all", tmp_path / "d", label_nc=118, intensity=CT, label_table=table)


def test_checkpoint_stores_the_table_as_data_and_rebuilds_the_split(tmp_path: Path) -> None:
    write_sparse_ct_folder(tmp_path / "d", n_cases=3)
    table = _table_file(tmp_path / "t.yaml", "{0: 0, 5: liver, 51: heart, 117: costal_cartilages}")
    info = plain_data_info(
        {"name": "nifti_pairs", "label_nc": 4, "class_names": CLASSES, "label_table": str(table),
         "intensity": CT, "root": str(tmp_path / "d"), "block_size": [12, 16, 16]}
    )  # fmt: skip
    assert info["label_table"]["remap"] == [[0, 0], [5, 1], [51, 2], [117, 3]]  # data, not the file's path
    table.unlink()  # the checkpoint needs no file
    assert label_table_of(info).remap == {0: 0, 5: 1, 51: 2, 117: 3}
    ds = build_split(info, "all")
    assert int(ds[0]["label"].max()) == 3
    bad = dict(info, label_table={"name": "x", "classes": CLASSES, "remap": [[0, 0], [5, 9]]})
    with pytest.raises(DataError, match="remap"):
        label_table_of(bad)
    with pytest.raises(DataError, match="names code to call"):
        plain_data_info(dict(info, label_table={"_target_": "os.system", "name": "x"}))


def test_names_from_files_and_from_a_one_file_per_class_folder(tmp_path: Path) -> None:
    (tmp_path / "n.json").write_text(json.dumps({"5": "liver", "51": "heart"}))
    assert read_class_names(tmp_path / "n.json") == {5: "liver", 51: "heart"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "left kidney": 2}}))
    assert read_class_names(tmp_path / "dataset.json") == {0: "background", 2: "left_kidney"}
    ids = write_sparse_ct_folder(tmp_path / "d", n_cases=3, masks_of="case01")
    labels = sorted((tmp_path / "d" / "labels").glob("*.nii.gz"))
    names, warnings = class_names_from_masks(tmp_path / "d" / ids[1] / "segmentations", labels)
    assert names == SPARSE_NAMES and warnings == []  # ids from the values under each mask, not the file order
    names, warnings = class_names_from_masks(tmp_path / "d" / ids[1] / "segmentations", [])
    assert sorted(names) == [1, 2, 3] and "sorted file names" in warnings[0]
