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

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dataset.contract import DataError
from dataset.files import read_run_record

TABLE_PACKAGE_DIR = "label_tables"
#: Run records that hold the label table of the maps written beside them: ``generate.py`` (and its
#: ``--export-real``) write ``generation.json``, ``generate_labels.py`` writes ``labels_run.json``.
TABLE_RECORDS = ("generation.json", "labels_run.json")


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

    def to_plain(self) -> dict[str, Any]:
        """The table as plain data for a checkpoint or run record: name, classes, remap as sorted pairs.

        ``extra`` sections are not part of it (they describe raw files of a paper dataset, not the vocabulary).
        """
        return {
            "name": self.name,
            "classes": list(self.class_names),
            "remap": [[src, dst] for src, dst in sorted(self.remap.items())],
        }

    def source_values(self) -> np.ndarray:
        """Class id -> the source value a class is written back as (the smallest one mapped to it), (K,) int64.

        Raises:
            ValueError: a class that no source value maps to (it could not be written back).
        """
        out = np.full(self.label_nc, -1, dtype=np.int64)
        for src, dst in sorted(self.remap.items(), reverse=True):
            out[dst] = src
        empty = [self.class_names[k] for k in np.flatnonzero(out < 0)]
        if empty:
            raise ValueError(f"label table {self.name!r}: no source value maps to class(es) {empty}")
        return out


def _parse_table(raw: Mapping[str, Any], origin: str) -> LabelTable:
    if not isinstance(raw, Mapping) or "name" not in raw or "classes" not in raw:
        raise ValueError(f"{origin}: a label table needs 'name' and 'classes'")
    names = tuple(str(c) for c in raw["classes"])
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"{origin}: class names must be unique and at least two, got {names}")
    if "label_nc" in raw and int(raw["label_nc"]) != len(names):
        raise ValueError(f"{origin}: label_nc={raw['label_nc']} but {len(names)} classes are listed")
    if raw.get("remap") is None:
        remap = {i: i for i in range(len(names))}
    else:
        pairs = raw["remap"].items() if isinstance(raw["remap"], Mapping) else raw["remap"]
        remap = {}
        for pair in pairs:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"{origin}: remap must map source values to classes, got entry {pair!r}")
            key, value = pair
            try:
                src = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"{origin}: remap key {key!r} is not an integer source value") from None
            if src in remap:
                raise ValueError(f"{origin}: source value {src} is listed twice in remap")
            if isinstance(value, int) and not isinstance(value, bool):
                dst = value
            else:  # a class name
                dst = names.index(str(value)) if str(value) in names else -1
            if src < 0 or not 0 <= dst < len(names):
                raise ValueError(f"{origin}: remap {key!r} -> {value!r} is not a source value >= 0 -> a known class")
            remap[src] = dst
    extra = {k: v for k, v in raw.items() if k not in ("name", "classes", "remap", "label_nc")}
    return LabelTable(name=str(raw["name"]), class_names=names, remap=remap, extra=extra)


def parse_label_table(raw: Mapping[str, Any], origin: str = "label table") -> LabelTable:
    """Build a table from its YAML form or its plain form (:meth:`LabelTable.to_plain`), checking it.

    Raises:
        ValueError: malformed (see the module docstring), naming ``origin``.
    """
    return _parse_table(raw, origin)


def resolve_label_table(spec: str | Path | Mapping[str, Any] | LabelTable | None) -> LabelTable | None:
    """A table from what a dataset config or checkpoint holds: None, a name or YAML path, a mapping, a table.

    Raises:
        ValueError: unknown name, missing file, malformed table.
    """
    if spec is None or isinstance(spec, LabelTable):
        return spec
    if isinstance(spec, Mapping):
        return parse_label_table(spec, "label_table")
    return load_label_table(spec)


def load_label_table(name_or_path: str | Path | LabelTable) -> LabelTable:
    """Load a table by dataset name (shipped in ``dataset/label_tables/``) or from a YAML file path.

    A :class:`LabelTable` passed in is returned as it is, so callers can take either.

    Raises:
        ValueError: unknown name or malformed table.
    """
    if isinstance(name_or_path, LabelTable):
        return name_or_path
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


def restore_labels(label: np.ndarray, table: LabelTable) -> np.ndarray:
    """Write class ids back as the table's source values (merged classes: their smallest source value).

    Args:
        label: integer array of class ids in ``[0, table.label_nc)`` (any shape).
        table: the table the ids were made with.

    Returns:
        int64 array of source values, same shape.

    Raises:
        ValueError: an id outside the table, or a class no source value maps to.
    """
    if label.size and (label.min() < 0 or label.max() >= table.label_nc):
        raise ValueError(
            f"class ids {int(label.min())}..{int(label.max())} outside the table's 0..{table.label_nc - 1}"
        )
    return table.source_values()[label]


def suggest_label_table(name: str, values: Sequence[int], names: Mapping[int, str] | None = None) -> LabelTable:
    """The table that compacts the source values that occur, in increasing order, to classes 0, 1, 2, ...

    Args:
        name: table name (the dataset's).
        values: the source values found in the label files; 0 (background) is always class 0.
        names: source value -> class name (``--names``); values without one get ``class_<value>``.

    Returns:
        A table with one class per value (nothing merged: merging is a decision for the user to write down).
    """
    ordered = sorted({0, *(int(v) for v in values)})
    if ordered[0] < 0:
        raise ValueError(f"negative label value {ordered[0]}; class ids start at 0 (background)")
    names = dict(names or {})
    classes: list[str] = []
    for value in ordered:
        label = names.get(value) or ("background" if value == 0 else f"class_{value}")
        while label in classes:  # two values given one name: keep both, distinguishable
            label = f"{label}_{value}"
        classes.append(label)
    if len(classes) < 2:  # only background occurs: a second, empty class keeps the table usable
        classes.append("class_1")
        ordered.append(1)
    return LabelTable(name=name, class_names=tuple(classes), remap={v: k for k, v in enumerate(ordered)})


def render_label_table(table: LabelTable, header: Sequence[str] = ()) -> str:
    """The table as YAML text in the ``dataset/label_tables`` format (one ``value: class`` line per value)."""
    lines = [f"# {line}" if line else "#" for line in header]
    lines += [f"name: {json.dumps(table.name)}", "classes:   # class id = position in this list"]
    lines += [f"  - {json.dumps(c)}" for c in table.class_names]
    lines += ["remap:   # source voxel value -> class (several values may name one class: they are merged)"]
    lines += [f"  {src}: {json.dumps(table.class_names[dst])}" for src, dst in sorted(table.remap.items())]
    return "\n".join(lines) + "\n"


_NAME_RE = re.compile(r"[^A-Za-z0-9_.+-]+")


def _clean_name(text: str) -> str:
    """A class name usable in configs and as a condition key: runs of other characters become ``_``."""
    return _NAME_RE.sub("_", text.strip()).strip("_")


def read_class_names(path: str | Path) -> dict[int, str]:
    """Class names from a JSON/YAML file (id -> name, name -> id, or nnU-Net's ``{"labels": {...}}``).

    A folder is read by :func:`class_names_from_masks` instead (it needs the label maps to find each file's id).

    Raises:
        ValueError: unreadable, not a mapping, or ids that are not non-negative integers.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"--names {path}: cannot read it ({type(err).__name__})") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("labels"), Mapping):
        raw = raw["labels"]
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"--names {path}: expected a mapping id -> name (or name -> id)")
    out: dict[int, str] = {}
    for key, value in raw.items():
        ident, label = (key, value) if _is_id(key) else (value, key)
        if not _is_id(ident) or not isinstance(label, str) or not _clean_name(label):
            raise ValueError(f"--names {path}: entry {key!r}: {value!r} is not an id (integer >= 0) and a name")
        out[int(ident)] = _clean_name(label)
    return out


def _is_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isdigit()


def class_names_from_masks(folder: str | Path, label_maps: Sequence[Path]) -> tuple[dict[int, str], list[str]]:
    """Class names from a one-file-per-class folder (TotalSegmentator's ``segmentations/liver.nii.gz``, ...).

    The name is the file name; the id is found, in this order of preference:

    1. the file's own value, when it holds one non-zero value other than 1 (a mask that stores its class id);
    2. the value the multi-label map takes under the mask, in a label map on the masks' grid (the one named like
       the folder or its parent first, else the first of ``label_maps``: TotalSegmentator writes the masks and
       the multi-label map of a subject from one run); a mask with no voxel
       (a class absent from that subject) then gets no id and is reported;
    3. without such a map: the files' sorted order, ids 1, 2, ... (reported: check it against the tool's list).

    Args:
        folder: the folder of ``<class name>.nii[.gz]`` masks.
        label_maps: the dataset's label files (searched for one on the masks' grid).

    Returns:
        ``(id -> name, warnings)``.

    Raises:
        ValueError: no mask in the folder, masks on different grids, two masks claiming one id.
    """
    from dataset.nifti import NIFTI_SUFFIXES, load_header, read_nifti, strip_nifti_suffix

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--names {folder}: no NIfTI mask (<class name>.nii.gz) in this folder")
    warnings: list[str] = []
    masks = []
    for path in files:
        array, affine = read_nifti(path)
        if masks and (array.shape != masks[0][1].shape or not np.allclose(affine, masks[0][2], atol=1e-3)):
            raise ValueError(f"--names {path}: not on the grid of {files[0].name}; one folder holds one subject")
        masks.append((_clean_name(strip_nifti_suffix(path.name)), array, affine))
    shape, affine = masks[0][1].shape, masks[0][2]
    reference = None
    # the subject's own map first: a label file named like the folder or its parent (<subject>/segmentations)
    same_subject = {folder.name, folder.parent.name}
    label_maps = sorted(label_maps, key=lambda p: strip_nifti_suffix(Path(p).name) not in same_subject)
    for candidate in label_maps:
        img = load_header(candidate)
        if tuple(img.shape[:3]) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-3):
            reference = np.asarray(read_nifti(candidate)[0]).astype(np.int64)
            break
    names: dict[int, str] = {}
    owner: dict[int, str] = {}
    unmatched: list[str] = []
    for k, (name, array, _) in enumerate(masks):
        own = np.unique(array[array != 0])
        if own.size == 1 and int(own[0]) != 1 and float(own[0]).is_integer():
            ident = int(own[0])
        elif reference is None:
            ident = k + 1
        elif own.size == 0:
            unmatched.append(name)
            continue
        else:
            under = np.bincount(reference[array != 0].clip(0))
            under[0] = 0  # background under a mask is a resampling fringe, not the class
            ident = int(under.argmax())
            if under[ident] == 0:
                unmatched.append(name)
                continue
            if under[ident] < 0.5 * under.sum():
                warnings.append(f"--names {folder}: {name} covers label value {ident} only partly; check its id")
        if ident in owner:
            raise ValueError(f"--names {folder}: {owner[ident]} and {name} both map to label value {ident}")
        owner[ident], names[ident] = name, name
    if reference is None:
        warnings.append(
            f"--names {folder}: no label map of the dataset is on the masks' grid, so ids follow the sorted file "
            f"names (1..{len(masks)}); check them against your segmentation tool's class list"
        )
    if unmatched:  # (TotalSegmentator writes a file for every class, present or not)
        more = f" and {len(unmatched) - 8} more" if len(unmatched) > 8 else ""
        warnings.append(
            f"--names {folder}: {len(unmatched)} masks are empty there, so without an id: {unmatched[:8]}{more}"
        )
    return names, warnings


def recorded_label_table(*folders: str | Path | None) -> LabelTable | None:
    """The label table that the run records of ``folders`` hold: their label maps are in its source ids.

    A folder's own record counts (:data:`TABLE_RECORDS`), and its parent's where that record lists files inside
    the folder (``generate.py --export-real DIR`` writes ``DIR/labels/`` and records it in ``DIR``).

    Args:
        folders: folders of label maps or of volumes generated from them (None entries are skipped).

    Returns:
        The table, or None when no record holds one (the maps hold class ids ``0..K-1``).

    Raises:
        DataError: a malformed table, or two folders recording different tables (their ids name other classes).
    """
    found: dict[str, LabelTable] = {}
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        candidates = [(folder / name, None) for name in TABLE_RECORDS]
        candidates += [(folder.parent / name, folder.name) for name in TABLE_RECORDS]
        for path, inside in candidates:
            record = read_run_record(path)
            if not record or record.get("label_table") is None:
                continue
            if inside is not None and not any(
                str(rel).startswith(f"{inside}/") for rel in record.get("outputs") or []
            ):
                continue  # the parent's record is about other files
            try:
                found[str(path)] = parse_label_table(record["label_table"], f"{path}: label_table")
            except ValueError as err:
                raise DataError(str(err)) from None
            break
    tables = list(found.items())
    for path, table in tables[1:]:
        if (table.class_names, table.remap) != (tables[0][1].class_names, tables[0][1].remap):
            raise DataError(
                f"{path} and {tables[0][0]} record different label tables: their label ids name different classes"
            )
    return tables[0][1] if tables else None


def load_class_ids(path: str | Path, label_nc: int, table: LabelTable | None) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map in a model's class ids: through its table (the user's ids), or checked against label_nc.

    Returns:
        ``(label, affine)``: (D, H, W) int64 class ids in ``[0, label_nc)``, (4, 4) affine.

    Raises:
        DataError: unreadable or non-integer file; a value outside the table (or ``[0, label_nc)``), named.
    """
    from dataset.nifti import load_label

    if table is None:
        return load_label(path, label_nc)
    label, affine = load_label(path)
    return remap_labels(label, table, str(path)), affine
