"""A fixed table from dataset name to our dataset class, and the plain data a checkpoint may carry about its data.

Nothing read from a file names code to call (SPEC section 10): a diffusion checkpoint stores *plain* dataset
information (:func:`plain_data_info`: name, modality, class count and names, the label table as data (ids and
class names, :meth:`dataset.label_table.LabelTable.to_plain`; a table file named by the config is read and stored,
not its path), voxel and block size, intensity spec, root as a string, and the dataset constructor's plain
arguments) and :func:`build_split` picks the class from
:data:`DATASETS` by name, checks every field's type and refuses unknown keys. A ``_target_`` anywhere is refused;
the ``datamodule`` node of a Hydra dataset config (and of checkpoints written before this table existed) is never
instantiated: only its dataset's plain arguments that the table knows are kept, the rest is dropped and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dataset.contract import DataError
from dataset.intensity import validate_intensity
from dataset.label_table import LabelTable, parse_label_table, resolve_label_table

log = logging.getLogger(__name__)

_INT = (int,)
_NUM = (int, float)


@dataclass(frozen=True)
class DatasetEntry:
    """How to build one dataset: its class (``module:Class``, imported from this table only) and its arguments.

    Attributes:
        target: ``module:Class`` of our dataset class.
        kwargs: constructor arguments that may come from a checkpoint, with their kind: "int", "float", "str",
            "ints" (3 ints), "floats" (3 numbers), "intensity" (an intensity spec).
        from_info: constructor argument -> data_info field it is filled from (root, label_nc, block_size, ...).
    """

    target: str
    kwargs: Mapping[str, str]
    from_info: Mapping[str, str]

    def load(self) -> type:
        import importlib

        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


_PREPROCESSED_INFO = {"root": "root", "label_nc": "label_nc", "intensity": "intensity", "block_size": "block_size"}

#: The only dataset classes a checkpoint can lead to, by dataset name.
DATASETS: dict[str, DatasetEntry] = {
    "mni152": DatasetEntry(
        "dataset.mni152:MNI152Dataset",
        {"num_subjects": "int", "num_val": "int", "num_test": "int", "seed": "int", "margin_mm": "float"},
        {"root": "root", "size": "block_size", "label_nc": "label_nc"},
    ),
    "ct_abdomen": DatasetEntry(
        "dataset.ct_abdomen:CTAbdomenDataset",
        {
            "num_subjects": "int",
            "num_val": "int",
            "num_test": "int",
            "seed": "int",
            "margin_mm": "float",
            "source": "str?",
        },
        {"root": "root", "size": "block_size", "label_nc": "label_nc"},
    ),
    "synthetic": DatasetEntry(
        "dataset.synthetic:SyntheticPhantomDataset",
        {"num_samples": "int", "seed": "int"},
        {"size": "block_size", "label_nc": "label_nc", "voxel_size": "voxel_size"},
    ),
    "autopet": DatasetEntry("dataset.autopet:AutoPETDataset", {}, _PREPROCESSED_INFO),
    "duke": DatasetEntry("dataset.duke:DukeDataset", {}, _PREPROCESSED_INFO),
    "synthrad2023": DatasetEntry("dataset.synthrad2023:SynthRAD2023Dataset", {}, _PREPROCESSED_INFO),
    "nifti_pairs": DatasetEntry(
        "dataset.nifti_pairs:NiftiPairsDataset",
        {"manifest": "str", "val_frac": "float", "test_frac": "float", "seed": "int", "affine_atol": "float"},
        {**_PREPROCESSED_INFO, "label_table": "label_table"},
    ),
}

#: Fields of plain data info, with their kind (see :class:`DatasetEntry`); anything else is refused.
INFO_FIELDS: dict[str, str] = {
    "name": "str",
    "modality": "str",
    "label_nc": "int",
    "class_names": "strs",
    "label_table": "label_table?",
    "voxel_size": "floats?",
    "block_size": "ints",
    "intensity": "intensity",
    "root": "str?",
    "dataset_kwargs": "kwargs",
}
# keys of ``config/dataset/*.yaml`` that are never stored: Hydra nodes, and a figure window (no property of the data)
_CONFIG_ONLY = {"datamodule", "display_window"}


def find_targets(node: Any, path: str = "") -> list[str]:
    """Paths of every ``_target_`` (or other Hydra call key) inside a nested dict/list."""
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("_target_", "_partial_", "_args_", "_call_"):
                found.append(where)
            found += find_targets(value, where)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += find_targets(value, f"{path}[{i}]")
    return found


def _check(kind: str, value: Any, where: str) -> Any:
    """Validate and normalise one plain value of ``kind``; raise DataError with ``where`` otherwise."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and optional:
        return None

    def bad() -> DataError:
        return DataError(f"{where}: expected {kind}, got {type(value).__name__} {value!r:.80}")

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, _INT):
            raise bad()
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, _NUM):
            raise bad()
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    if kind in ("ints", "floats", "strs"):
        if not isinstance(value, (list, tuple)):
            raise bad()
        item = {"ints": "int", "floats": "float", "strs": "str"}[kind]
        out = [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind != "strs" and len(out) != 3:
            raise DataError(f"{where}: expected 3 values (D, H, W), got {len(out)}")
        return out
    if kind == "intensity":
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            raise bad()
        try:
            return validate_intensity(dict(value))
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
    if kind == "label_table":  # stored as data only: a path here would be code-free but not self-contained
        if not isinstance(value, Mapping):
            raise bad()
        try:
            return parse_label_table(value, where).to_plain()
        except ValueError as err:
            raise DataError(str(err)) from None
    raise AssertionError(kind)


def _check_kwargs(entry: DatasetEntry, kwargs: Any, where: str) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise DataError(f"{where}: expected a dict of dataset arguments, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(entry.kwargs))
    if unknown:
        raise DataError(f"{where}: unknown dataset argument(s) {unknown}; known: {sorted(entry.kwargs)}")
    return {k: _check(entry.kwargs[k], v, f"{where}.{k}") for k, v in kwargs.items()}


def validate_data_info(info: Any, where: str = "data_info") -> dict[str, Any]:
    """Check plain data info (types, known keys, known dataset); return a normalised copy.

    Raises:
        DataError: not a dict, a ``_target_`` anywhere, an unknown key, a wrong type, ``dataset_kwargs`` of an
            unknown dataset. (An unknown name alone is kept: only :func:`build_split` needs the table.)
    """
    if not isinstance(info, Mapping):
        raise DataError(f"{where}: expected a dict, got {type(info).__name__}")
    targets = find_targets(info)
    if targets:
        raise DataError(f"{where}: {targets[0]} names code to call; stored dataset information must be plain data")
    unknown = sorted(set(info) - set(INFO_FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; known: {sorted(INFO_FIELDS)}")
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key == "dataset_kwargs":
            continue
        out[key] = _check(INFO_FIELDS[key], value, f"{where}.{key}")
    name = out.get("name")
    if "dataset_kwargs" in info:
        if name is None:
            raise DataError(f"{where}: dataset_kwargs without a dataset name")
        if name not in DATASETS:
            raise DataError(f"{where}.name: unknown dataset {name!r}; known: {sorted(DATASETS)}")
        out["dataset_kwargs"] = _check_kwargs(DATASETS[name], info["dataset_kwargs"], f"{where}.dataset_kwargs")
    if "class_names" in out and "label_nc" in out and len(out["class_names"]) != out["label_nc"]:
        raise DataError(f"{where}: {len(out['class_names'])} class_names for label_nc={out['label_nc']}")
    table = out.get("label_table")
    if table is not None and (
        ("label_nc" in out and len(table["classes"]) != out["label_nc"])
        or ("class_names" in out and table["classes"] != out["class_names"])
    ):
        raise DataError(f"{where}: the label table's classes are not the dataset's label_nc / class_names")
    return out


def label_table_of(info: Mapping[str, Any] | None) -> LabelTable | None:
    """The label table a checkpoint's plain data info carries (None: its label maps hold class ids).

    Raises:
        DataError: a malformed table.
    """
    if not info or info.get("label_table") is None:
        return None
    return parse_label_table(_check("label_table", info["label_table"], "data_info.label_table"), "checkpoint")


def plain_data_info(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Strip a dataset config (``${dataset}``) to plain, checked data, as a checkpoint stores it.

    The ``datamodule`` node is never instantiated: its dataset's plain arguments that :data:`DATASETS` knows for
    this dataset are kept as ``dataset_kwargs``; the node itself is dropped (logged). Other keys that are not
    plain data info are dropped with a warning; a ``_target_`` anywhere else is refused.

    Raises:
        DataError: see :func:`validate_data_info`.
    """
    if config is None:
        return None
    if not isinstance(config, Mapping):
        if find_targets(config):
            raise DataError("data_info: names code to call; stored dataset information must be plain data")
        raise DataError(f"data_info: expected a dict, got {type(config).__name__}")
    info = {k: v for k, v in config.items() if k not in _CONFIG_ONLY}
    if isinstance(info.get("label_table"), str):  # a table file of the dataset config: its contents are stored
        try:
            info["label_table"] = resolve_label_table(info["label_table"]).to_plain()
        except ValueError as err:
            raise DataError(f"data_info.label_table: {err}") from None
    targets = find_targets(info)
    if targets:
        raise DataError(f"data_info: {targets[0]} names code to call; stored dataset information must be plain data")
    unknown = sorted(set(info) - set(INFO_FIELDS))
    if unknown:  # e.g. a key a user added to a dataset config: not stored (build_split would refuse it)
        log.warning("data_info: not stored in the checkpoint: %s (not plain dataset information)", unknown)
        info = {k: v for k, v in info.items() if k in INFO_FIELDS}
    node = config.get("datamodule")
    if node is not None:
        name = config.get("name")
        entry = DATASETS.get(name) if isinstance(name, str) else None
        if "dataset_kwargs" not in info and entry is not None:
            dataset_node = node.get("dataset") if isinstance(node, Mapping) else None
            kept = {}
            if isinstance(dataset_node, Mapping):
                kept = {k: v for k, v in dataset_node.items() if k in entry.kwargs and find_targets(v) == []}
            info["dataset_kwargs"] = kept
        log.info(
            "data_info.datamodule ignored (never instantiated); dataset %r is built from the registry with %s",
            name,
            info.get("dataset_kwargs") or "its defaults",
        )
    return validate_data_info(info)


def build_split(info: Mapping[str, Any], split: str, root: str | None = None) -> Any:
    """Build one split of the dataset that plain data info describes, from the fixed table.

    Args:
        info: plain data info (checked again here: it may come straight from a checkpoint).
        split: "train", "val" or "test".
        root: data folder overriding the recorded one (the data moved).

    Returns:
        The dataset (``len`` and ``[i]`` give samples ``{"image", "label", "affine", "id"}``).

    Raises:
        DataError: bad info, no dataset name, a dataset that needs a root and has none.
    """
    info = validate_data_info(info)
    name = info.get("name")
    if name is None:
        raise DataError("the checkpoint records no dataset name; pass label files instead of split=...")
    if name not in DATASETS:  # a dataset config of its own name: label files work, a split cannot be rebuilt
        raise DataError(
            f"the checkpoint's dataset {name!r} is not one of {sorted(DATASETS)}; pass label files, not split=..."
        )
    entry = DATASETS[name]
    kwargs = dict(info.get("dataset_kwargs") or {})
    if root is not None:
        info["root"] = str(root)
    for arg, field in entry.from_info.items():
        value = info.get(field)
        if value is None and arg == "root":
            raise DataError(f"dataset {name!r}: the checkpoint records no data root; pass --data-root")
        if value is not None:
            kwargs[arg] = value
    return entry.load()(split=split, **kwargs)
