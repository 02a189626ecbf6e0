"""Generic dataset over image/label NIfTI pairs: a preprocessing manifest or a plain folder.

Accepted layouts of ``root`` (first match wins):

1. ``root/manifest.json`` (or an explicit ``manifest=`` path): a JSON object with an ``entries`` list; each
   entry has ``image``, ``label`` (relative paths inside the manifest's folder: no absolute path, no ``..``),
   ``split`` (``train``/``val``/``test``) and optionally ``id``, ``patient`` and any metadata. This is what
   ``scripts/preprocess_*.py`` write. If entries carry ``patient``, patients must not occur in two splits.
2. ``root/<split>/images/<id>.nii.gz`` + ``root/<split>/labels/<id>.nii.gz``: one folder per split.
3. ``root/images/<id>.nii.gz`` + ``root/labels/<id>.nii.gz``: no split information. Ids are split by a seeded
   permutation (``val_frac``, ``test_frac``, ``seed``), each id treated as its own patient; write a manifest
   if several files belong to one patient.

Pairs are matched by file name (``.nii`` or ``.nii.gz``); a file without its partner is an error. ``split``
may also be ``"all"`` (every pair, e.g. for generation or evaluation over a folder). Sample ids (manifest
``id`` or file names) become output file names downstream, so they must pass :func:`dataset.files.check_name`.

Label values are class ids in ``[0, label_nc)``, or, with a ``label_table`` (:mod:`dataset.label_table`: a YAML
file in the ``dataset/label_tables`` format, or the same mapping inline), any source values the table maps to its
classes: sparse ids (TotalSegmentator's 0-117) are compacted, several values may merge into one class, and
``label_nc`` / ``class_names`` must be the table's. Every label file of the split is checked once when the
dataset is built, before any training step: a value outside ``[0, label_nc)``, or absent from the table, in any
file (the last of many included) raises :class:`DataError` naming the file and the value. The per-file minimum,
maximum and (with a table) distinct values are cached in the user's cache folder (:func:`label_cache_path`;
never in the data folder, which stays read-only), keyed by relative path, size and mtime, so later runs re-read
only files that changed.

Images must either already be in [-1, 1] (``intensity=None``, the case for preprocessed blocks) or be raw
data normalised on load by an ``intensity`` spec (:mod:`dataset.intensity`). ``block_size`` centre-crops or
pads every volume to one size (image padded with -1, labels with background; the affine follows), which
batching needs when volumes differ in size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from torch.utils.data import Dataset

from dataset.contract import DataError, Sample, check_class_names, validate_sample
from dataset.crops import center_crop_or_pad_start, extract_block
from dataset.describe import log_split_summary
from dataset.files import PRODUCER, atomic_write_json, check_name
from dataset.intensity import normalize, validate_intensity
from dataset.label_table import LabelTable, remap_labels, resolve_label_table
from dataset.nifti import (
    AFFINE_ATOL,
    NIFTI_SUFFIXES,
    label_value_range,
    label_values,
    load_pair,
    make_sample,
    shift_affine,
    strip_nifti_suffix,
)
from dataset.preprocess import read_manifest
from dataset.splits import SPLITS, check_split, split_ids
from dataset.transaction import MANIFEST_NAME

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder (default ``$XDG_CACHE_HOME/med-lsdm`` or ``~/.cache/med-lsdm``).
CACHE_ENV = "MEDLSDM_CACHE_DIR"


def _nifti_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith("."):
            files[strip_nifti_suffix(path.name)] = path
    return files


def pair_folder(images_dir: Path, labels_dir: Path) -> list[tuple[str, Path, Path]]:
    """Match ``images_dir/<id>.nii[.gz]`` with ``labels_dir/<id>.nii[.gz]``.

    Returns:
        ``[(id, image_path, label_path), ...]`` sorted by id.

    Raises:
        DataError: a file without its partner, or a missing folder.
    """
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    images, labels = _nifti_files(images_dir), _nifti_files(labels_dir)
    for sid, path in images.items():
        if sid not in labels:
            raise DataError(f"{labels_dir / (sid + '.nii.gz')}: label partner of image {path} not found")
    for sid, path in labels.items():
        if sid not in images:
            raise DataError(f"{images_dir / (sid + '.nii.gz')}: image partner of label {path} not found")
    return [(sid, images[sid], labels[sid]) for sid in sorted(images)]


def manifest_relpath(value: object, where: str) -> str:
    """A manifest's image/label path, if it is a relative path that stays inside the manifest's folder.

    Raises:
        DataError: not a non-empty string, absolute, or with a ``..`` (or empty) component.
    """
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: path {value!r} must be a non-empty string")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or Path(value).is_absolute() or any(p in ("..", "") for p in posix.parts):
        raise DataError(f"{where}: path {value!r} must be relative and stay inside the dataset folder (no '..')")
    return value


def _file_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def label_cache_path(dataset_dir: Path) -> Path:
    """Where the label ranges of the dataset in ``dataset_dir`` are cached.

    In the user's cache folder (:data:`CACHE_ENV`, else ``$XDG_CACHE_HOME/med-lsdm``, else
    ``~/.cache/med-lsdm``), never in the dataset folder: data folders are inputs (often shared and read-only),
    and no command writes outside its outputs. One file per dataset folder, named by a hash of its path.
    """
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "med-lsdm"
    digest = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:16]
    return Path(base) / "label-ranges" / f"{digest}.json"


def check_label_files(
    paths: Sequence[Path], label_nc: int, dataset_dir: Path, table: LabelTable | None = None
) -> None:
    """Check every label file's values lie in ``[0, label_nc)``, reading only files the cache does not know.

    Args:
        paths: label files.
        label_nc: number of classes.
        dataset_dir: the dataset's folder (manifest folder or root); cache entries (:func:`label_cache_path`)
            are keyed by the path relative to it, the file size and its mtime (ns), and hold the file's minimum
            and maximum value (and its distinct values once a table asked for them).
        table: when given, every value must be a source value of the table instead (then ``label_nc`` is unused).

    Raises:
        DataError: naming the first bad file and value (and how many others are bad); unreadable or non-integer
            labels.
    """
    cache_path = label_cache_path(dataset_dir)
    root = dataset_dir.resolve()
    try:
        cached = json.loads(cache_path.read_text(encoding="utf-8"))
        ours = cached.get("producer") == PRODUCER and cached.get("folder") == str(root)
        files = cached["files"] if ours and isinstance(cached["files"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        files = {}
    changed = 0
    bad: list[tuple[Path, int, int]] = []
    bad_values: list[tuple[Path, list[int]]] = []
    for path in paths:
        resolved = path.resolve()
        key = resolved.relative_to(root).as_posix() if root in resolved.parents else str(resolved)
        size, mtime = _file_key(path)
        hit = files.get(key)
        fresh = isinstance(hit, dict) and hit.get("size") == size and hit.get("mtime_ns") == mtime
        if table is not None:
            if not (fresh and isinstance(hit.get("values"), list)):
                values = label_values(path)
                lo, hi = (values[0], values[-1]) if values else (0, 0)
                hit = files[key] = {"size": size, "mtime_ns": mtime, "min": lo, "max": hi, "values": values}
                changed += 1
            unknown = [int(v) for v in hit["values"] if int(v) not in table.remap]
            if unknown:
                bad_values.append((path, unknown))
            continue
        if fresh:
            lo, hi = int(hit["min"]), int(hit["max"])
        else:
            lo, hi = label_value_range(path)
            files[key] = {"size": size, "mtime_ns": mtime, "min": lo, "max": hi}
            changed += 1
        if lo < 0 or hi >= label_nc:
            bad.append((path, lo, hi))
    if changed:
        log.info("checked the label values of %d of %d files (the rest cached in %s)", changed, len(paths), cache_path)
        try:
            record = {"producer": PRODUCER, "kind": "label-ranges", "folder": str(root), "files": files}
            atomic_write_json(cache_path, record)
        except OSError as err:  # no writable cache folder: the check simply runs again next time
            log.debug("cannot write %s (%s); label ranges are not cached", cache_path, err)
    if bad_values:
        path, unknown = bad_values[0]
        more = f"; {len(bad_values) - 1} more file(s) hold values the table lacks" if len(bad_values) > 1 else ""
        raise DataError(
            f"{path}: label value(s) {unknown[:10]} not in the label table {table.name!r} (it maps "
            f"{_value_list(sorted(table.remap))}); add them to the table (a class, or merged into one){more}"
        )
    if bad:
        path, lo, hi = bad[0]
        more = f"; {len(bad) - 1} more file(s) out of range" if len(bad) > 1 else ""
        raise DataError(
            f"{path}: label values in [{lo}, {hi}] outside [0, {label_nc}); the dataset config says "
            f"label_nc={label_nc}{more}"
        )


def _value_list(values: list[int]) -> str:
    """Source values for a message: all of them when few, else the first and last ones."""
    return str(values) if len(values) <= 12 else f"[{', '.join(map(str, values[:6]))}, ..., {values[-1]}]"


def check_table_matches(table: LabelTable, label_nc: int, class_names: Sequence[str] | None) -> None:
    """Refuse a dataset config whose ``label_nc`` / ``class_names`` are not its label table's (one line).

    Raises:
        ValueError: naming both sides.
    """
    if label_nc != table.label_nc or (class_names is not None and list(class_names) != list(table.class_names)):
        raise ValueError(
            f"the label table {table.name!r} has {table.label_nc} classes {list(table.class_names)[:8]}..., the "
            f"dataset config label_nc={label_nc} and class_names {list(class_names or [])[:8]}...: copy the "
            "table's classes into label_nc and class_names (scripts/inspect_dataset.py writes both)"
        )


class NiftiPairsDataset(Dataset):
    """Image/label NIfTI pairs as contract samples (see the module docstring for layouts).

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        root: data folder.
        label_nc: number of classes; label values must lie in ``[0, label_nc)``.
        manifest: explicit manifest path (default ``root/manifest.json`` if present).
        intensity: spec applied to raw images on load; None = images are already in [-1, 1].
        block_size: (D, H, W) to centre-crop/pad every volume to, or None to keep sizes.
        val_frac, test_frac, seed: split of the flat folder layout.
        affine_atol: image/label affine tolerance.
        dataset_name: when set, a manifest must name this dataset (guards against a wrong ``root``).
        class_names: the config's class names; their number must equal ``label_nc`` (default: the manifest's).
        check_labels: check every label file's value range now (module docstring); leave True for training.
        label_table: file value -> class table (module docstring): a YAML path, its mapping, or the plain data a
            checkpoint stores; None = the files hold class ids.
    """

    def __init__(
        self,
        split: str,
        root: str | Path,
        label_nc: int,
        manifest: str | Path | None = None,
        intensity: Mapping[str, Any] | None = None,
        block_size: Sequence[int] | None = None,
        val_frac: float = 0.1,
        test_frac: float = 0.1,
        seed: int = 0,
        affine_atol: float = AFFINE_ATOL,
        dataset_name: str | None = None,
        class_names: Sequence[str] | None = None,
        check_labels: bool = True,
        label_table: str | Path | Mapping[str, Any] | LabelTable | None = None,
    ) -> None:
        super().__init__()
        self.split = check_split(split, allow_all=True)
        if label_nc < 2:
            raise ValueError(f"label_nc must be >= 2, got {label_nc}")
        if class_names is not None:
            check_class_names(label_nc, class_names)
        self.label_table = resolve_label_table(label_table)
        if self.label_table is not None:
            check_table_matches(self.label_table, label_nc, class_names)
        if block_size is not None and (len(block_size) != 3 or any(int(b) < 1 for b in block_size)):
            raise ValueError(f"block_size must be three positive ints (D, H, W), got {block_size}")
        self.root = Path(root)
        self.label_nc = int(label_nc)
        self.intensity = validate_intensity(intensity) if intensity is not None else None
        self.block_size = tuple(int(b) for b in block_size) if block_size is not None else None
        self.affine_atol = affine_atol
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.manifest: dict[str, Any] | None = None
        #: Per-item metadata (manifest entry or {"id": ...}), aligned with ``self.items``.
        self.entries: list[dict[str, Any]] = []
        self.items: list[tuple[str, Path, Path]] = []

        manifest_path = Path(manifest) if manifest is not None else self.root / MANIFEST_NAME
        data_dir = manifest_path.parent if manifest is not None or manifest_path.is_file() else self.root
        if manifest is not None or manifest_path.is_file():
            self._from_manifest(manifest_path, dataset_name)
        elif dataset_name is not None:
            raise DataError(f"{manifest_path}: manifest not found; run scripts/preprocess_{dataset_name}.py first")
        elif any((self.root / s / "images").is_dir() for s in SPLITS):
            self._from_split_folders()
        elif (self.root / "images").is_dir():
            self._from_flat_folder(val_frac, test_frac, seed)
        else:
            raise DataError(
                f"{self.root}: found neither {MANIFEST_NAME}, <split>/images/ nor images/; see dataset/nifti_pairs.py"
            )
        for _, image_path, label_path in self.items:
            for path, partner in ((image_path, label_path), (label_path, image_path)):
                if not path.is_file():
                    raise DataError(f"{path}: file not found (partner of {partner})")
        if not self.items:
            log.warning("%s: split %r is empty", self.root, self.split)
        elif check_labels:
            check_label_files([label for _, _, label in self.items], self.label_nc, data_dir, self.label_table)
        if self.items:  # say what loading will do (size, intensity, pad/crop, voxel sizes) instead of hiding it
            log_split_summary(
                self.root.name, self.split, [image for _, image, _ in self.items], self.block_size, self.intensity
            )

    # ----------------------------------------------------------------------------------------------- layouts
    def _from_manifest(self, path: Path, dataset_name: str | None) -> None:
        manifest = read_manifest(path)
        if dataset_name is not None and manifest.get("dataset") != dataset_name:
            raise DataError(f"{path}: manifest is for dataset {manifest.get('dataset')!r}, expected {dataset_name!r}")
        if "label_nc" in manifest and int(manifest["label_nc"]) != self.label_nc:
            raise DataError(f"{path}: manifest says label_nc={manifest['label_nc']}, the config {self.label_nc}")
        if manifest.get("images_normalized") and self.intensity is not None and self.intensity["kind"] != "none":
            raise ValueError(f"{path}: images are already normalised; do not pass an intensity spec")
        patient_splits: dict[str, str] = {}
        for i, entry in enumerate(manifest["entries"]):
            if not all(k in entry for k in ("image", "label", "split")) or entry["split"] not in SPLITS:
                raise DataError(f"{path}: entry {i} needs image, label and split in {SPLITS}: {entry}")
            patient = entry.get("patient")
            if patient is not None and patient_splits.setdefault(patient, entry["split"]) != entry["split"]:
                raise DataError(
                    f"{path}: patient {patient!r} occurs in splits {patient_splits[patient]!r} "
                    f"and {entry['split']!r}; splits must be disjoint by patient"
                )
            where = f"{path}: entry {i}"
            image = path.parent / manifest_relpath(entry["image"], where)
            label = path.parent / manifest_relpath(entry["label"], where)
            sid = entry.get("id", strip_nifti_suffix(image.name))
            sid = check_name(str(sid) if isinstance(sid, int) and not isinstance(sid, bool) else sid, f"{where}: id")
            if self.split not in ("all", entry["split"]):
                continue
            self.items.append((sid, image, label))
            self.entries.append(dict(entry))
        self.manifest = manifest
        stored = manifest.get("class_names")
        if self.class_names is None:
            self.class_names = list(stored) if isinstance(stored, list) else None
        elif isinstance(stored, list) and len(stored) != len(self.class_names):
            raise DataError(
                f"{path}: manifest has {len(stored)} class names, the config {len(self.class_names)}: "
                f"{self.class_names}"
            )

    def _from_split_folders(self) -> None:
        for split in SPLITS if self.split == "all" else (self.split,):
            if (self.root / split / "images").is_dir():
                for sid, image, label in pair_folder(self.root / split / "images", self.root / split / "labels"):
                    self.items.append((check_name(sid, f"{image}: sample id"), image, label))
                    self.entries.append({"id": sid, "split": split})

    def _from_flat_folder(self, val_frac: float, test_frac: float, seed: int) -> None:
        pairs = pair_folder(self.root / "images", self.root / "labels")
        try:
            assignment = split_ids([p[0] for p in pairs], val_frac, test_frac, seed)
        except ValueError:
            if self.split != "all":  # too few pairs to split; "all" (e.g. generation over a folder) still works
                raise
            assignment = {}
        for sid, image, label in pairs:
            check_name(sid, f"{image}: sample id")
            if self.split in ("all", assignment.get(sid)):
                self.items.append((sid, image, label))
                self.entries.append({"id": sid, "split": assignment.get(sid)})

    # --------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Load pair ``index``: image (1, D, H, W) float32 in [-1, 1], label (1, D, H, W) int64, affine, id."""
        sid, image_path, label_path = self.items[index]
        table = self.label_table
        image, label, affine = load_pair(image_path, label_path, None if table else self.label_nc, self.affine_atol)
        if table is not None:
            label = remap_labels(label, table, str(label_path))
        image, _ = normalize(image, self.intensity, source=str(image_path))
        if self.block_size is not None and tuple(image.shape) != self.block_size:
            start = center_crop_or_pad_start(image.shape, self.block_size)
            image = extract_block(image, start, self.block_size, -1.0)
            label = extract_block(label, start, self.block_size, 0)
            affine = shift_affine(affine, start)
        sample = make_sample(image, label, affine, sid)
        validate_sample(sample, self.label_nc)
        return sample


class PreprocessedDataset(NiftiPairsDataset):
    """Blocks written by ``scripts/preprocess_<name>.py``: requires ``root/manifest.json`` naming ``name``.

    A paper dataset subclasses it with its ``NAME`` and ``LABEL_NC`` as defaults (``dataset/autopet.py`` ...).

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        root: the ``--dst`` folder of preprocessing.
        label_nc: number of classes (checked against the manifest); default: the class's ``LABEL_NC``.
        name: dataset name the manifest must carry; default: the class's ``NAME``.
        intensity: the spec the config believes was used (generation inverts with it); when given it must
            match the manifest's. Blocks are stored normalised, so nothing is applied on load.
        block_size: expected (D, H, W) block size; when given it must match the manifest's.
        class_names: the config's class names; their number must equal ``label_nc`` and the manifest's.
    """

    NAME: ClassVar[str | None] = None
    LABEL_NC: ClassVar[int | None] = None

    def __init__(
        self,
        split: str,
        root: str | Path,
        label_nc: int | None = None,
        name: str | None = None,
        intensity: Mapping[str, Any] | None = None,
        block_size: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        label_nc = self.LABEL_NC if label_nc is None else label_nc
        name = self.NAME if name is None else name
        if label_nc is None or name is None:
            raise TypeError(f"{type(self).__name__} needs label_nc and name (or a subclass that sets them)")
        super().__init__(split=split, root=root, label_nc=label_nc, dataset_name=name, class_names=class_names)
        manifest = self.manifest or {}  # dataset_name forces the manifest layout, so this is the manifest
        where = self.root / MANIFEST_NAME
        if intensity is not None:
            expected, stored = validate_intensity(intensity), validate_intensity(manifest.get("intensity"))
            if expected != stored:
                raise DataError(
                    f"{where}: blocks were normalised with {stored}, the config says {expected}; "
                    "fix the dataset config's intensity node"
                )
        stored_block = manifest.get("options", {}).get("block_size")
        if block_size is not None and stored_block is not None and list(block_size) != list(stored_block):
            raise DataError(f"{where}: blocks are {stored_block}, the config says block_size={list(block_size)}")
