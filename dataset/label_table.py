"""Explicit label remapping tables (``dataset/label_tables/<name>.yaml``).

A table is data, not code::

    name: synthrad2023
    classes: [background, kidney, ...]   # index = class id; label_nc = len(classes)
    remap: {0: 0, 1: 1, ...}             # source voxel value -> class id (optional: identity)
    # any other keys (e.g. Duke's segmentation_files) are kept in ``LabelTable.extra``

Every source value found in a label file must appear in ``remap``; a missing one is an error naming the file
and the value, so a changed labelling tool cannot slip unnoticed into training data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dataset.contract import DataError

TABLE_PACKAGE_DIR = "label_tables"


@dataclass(frozen=True)
class LabelTable:
    """A dataset's classes and the map from source label values to class ids.

    Args:
        name: dataset name.
        class_names: names indexed by class id (0 = background).
        remap: source voxel value -> class id.
        extra: further table sections (dataset-specific, e.g. Duke's segment files).
    """

    name: str
    class_names: tuple[str, ...]
    remap: dict[int, int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label_nc(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    def class_id(self, name: str) -> int:
        """Class id of a class name; ``ValueError`` if the table has no such class."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(f"label table {self.name!r} has no class {name!r}; classes: {self.class_names}") from None


def _parse_table(raw: dict[str, Any], origin: str) -> LabelTable:
    if not isinstance(raw, dict) or "name" not in raw or "classes" not in raw:
        raise ValueError(f"{origin}: a label table needs 'name' and 'classes'")
    names = tuple(str(c) for c in raw["classes"])
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"{origin}: class names must be unique and at least two, got {names}")
    if "label_nc" in raw and int(raw["label_nc"]) != len(names):
        raise ValueError(f"{origin}: label_nc={raw['label_nc']} but {len(names)} classes are listed")
    if raw.get("remap") is None:
        remap = {i: i for i in range(len(names))}
    else:
        remap = {}
        for key, value in raw["remap"].items():
            src = int(key)
            if isinstance(value, int):
                dst = value
            else:  # a class name
                dst = names.index(str(value)) if str(value) in names else -1
            if src < 0 or not 0 <= dst < len(names):
                raise ValueError(f"{origin}: remap {key!r} -> {value!r} is not a source value >= 0 -> a known class")
            remap[src] = dst
    extra = {k: v for k, v in raw.items() if k not in ("name", "classes", "remap", "label_nc")}
    return LabelTable(name=str(raw["name"]), class_names=names, remap=remap, extra=extra)


def load_label_table(name_or_path: str | Path) -> LabelTable:
    """Load a table by dataset name (shipped in ``dataset/label_tables/``) or from a YAML file path.

    Raises:
        ValueError: unknown name or malformed table.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ValueError(f"label table file {candidate} not found")
        text, origin = candidate.read_text(), str(candidate)
    else:
        resource = resources.files("dataset").joinpath(TABLE_PACKAGE_DIR, f"{name_or_path}.yaml")
        if not resource.is_file():
            shipped = sorted(
                p.name[:-5]
                for p in resources.files("dataset").joinpath(TABLE_PACKAGE_DIR).iterdir()
                if p.name.endswith(".yaml")
            )
            raise ValueError(f"no label table named {name_or_path!r}; shipped tables: {shipped}")
        text, origin = resource.read_text(), f"dataset/{TABLE_PACKAGE_DIR}/{name_or_path}.yaml"
    return _parse_table(yaml.safe_load(text), origin)


def remap_labels(label: np.ndarray, table: LabelTable, source: str) -> np.ndarray:
    """Map source label values to class ids through ``table.remap``.

    Args:
        label: integer array of source values (any shape).
        table: the dataset's table.
        source: file name quoted in errors.

    Returns:
        int64 array of class ids in ``[0, table.label_nc)``, same shape.

    Raises:
        DataError: a value (negative, or absent from the table) that the table does not map.
    """
    values = np.unique(label)
    missing = [int(v) for v in values if int(v) not in table.remap]
    if missing:
        raise DataError(
            f"{source}: label values {missing[:10]} are not in the {table.name!r} label table "
            f"(known source values: {sorted(table.remap)[:40]})"
        )
    lut = np.zeros(int(values.max()) + 1, dtype=np.int64)
    for src, dst in table.remap.items():
        if src < lut.size:
            lut[src] = dst
    return lut[label]
