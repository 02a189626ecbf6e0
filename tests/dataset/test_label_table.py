"""Label tables: shipped tables, remapping, unknown values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dataset.contract import DataError
from dataset.label_table import load_label_table, remap_labels

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "dataset"


@pytest.mark.parametrize(("name", "label_nc"), [("autopet", 37), ("synthrad2023", 31), ("duke", 4)])
def test_shipped_tables_match_the_dataset_configs(name: str, label_nc: int) -> None:
    table = load_label_table(name)
    assert table.label_nc == label_nc and table.class_names[0] == "background"
    assert load_label_table(table) is table  # a loaded table is taken as it is
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert cfg["label_nc"] == label_nc and list(cfg["class_names"]) == list(table.class_names)
    assert sorted(set(table.remap.values())) == list(range(label_nc))


def test_synthrad_groups_follow_the_reference_order() -> None:
    table = load_label_table("synthrad2023")
    assert table.class_id("kidney") == 1 and table.class_id("urinary_bladder") == 26
    assert table.class_id("skeletal_muscle") == 30


def test_remap_known_answer_and_unknown_value(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nclasses: [background, liver, bone]\nremap: {0: 0, 5: liver, 9: 2, 10: 2}\n")
    table = load_label_table(path)
    out = remap_labels(np.array([[0, 5], [9, 10]]), table, "x.nii.gz")
    np.testing.assert_array_equal(out, [[0, 1], [2, 2]])
    with pytest.raises(DataError, match=r"case7_0002.nii.gz: label values \[7\] are not in the 't' label table"):
        remap_labels(np.array([0, 7, 5]), table, "case7_0002.nii.gz")


@pytest.mark.parametrize(
    "text",
    [
        "classes: [a, b]\n",
        "name: t\nclasses: [a, a]\n",
        "name: t\nclasses: [a, b]\nremap: {0: c}\n",
        "name: t\nlabel_nc: 3\nclasses: [a, b]\n",
    ],
    ids=["no-name", "duplicate", "unknown-class", "label_nc"],
)
def test_malformed_tables(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_label_table(path)


def test_unknown_table_name() -> None:
    with pytest.raises(ValueError, match="shipped tables"):
        load_label_table("nonexistent")
