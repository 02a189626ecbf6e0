"""Generic dataset over image/label NIfTI pairs: a preprocessing manifest or a plain folder.

Accepted layouts of ``root`` (first match wins):

1. ``root/manifest.json`` (or an explicit ``manifest=`` path): a JSON object with an ``entries`` list; each
   entry has ``image``, ``label`` (paths relative to the manifest's folder, or absolute), ``split``
   (``train``/``val``/``test``) and optionally ``id``, ``patient`` and any metadata. This is what
   ``scripts/preprocess_*.py`` write. If entries carry ``patient``, patients must not occur in two splits.
2. ``root/<split>/images/<id>.nii.gz`` + ``root/<split>/labels/<id>.nii.gz``: one folder per split.
3. ``root/images/<id>.nii.gz`` + ``root/labels/<id>.nii.gz``: no split information. Ids are split by a seeded
   permutation (``val_frac``, ``test_frac``, ``seed``), each id treated as its own patient; write a manifest
   if several files belong to one patient.

Pairs are matched by file name (``.nii`` or ``.nii.gz``); a file without its partner is an error. ``split``
may also be ``"all"`` (every pair, e.g. for generation or evaluation over a folder).

Images must either already be in [-1, 1] (``intensity=None``, the case for preprocessed blocks) or be raw
data normalised on load by an ``intensity`` spec (:mod:`dataset.intensity`). ``block_size`` centre-crops or
pads every volume to one size (image padded with -1, labels with background; the affine follows), which
batching needs when volumes differ in size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from dataset.blocks import center_crop_or_pad_start, extract_block
from dataset.contract import DataError, Sample, validate_sample
from dataset.intensity import normalize, validate_intensity
from dataset.nifti import AFFINE_ATOL, NIFTI_SUFFIXES, load_pair, make_sample, shift_affine, strip_nifti_suffix
from dataset.preprocess import MANIFEST_NAME, read_manifest
from dataset.splits import SPLITS, check_split, split_ids

log = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__()
        self.split = check_split(split, allow_all=True)
        if label_nc < 2:
            raise ValueError(f"label_nc must be >= 2, got {label_nc}")
        if block_size is not None and (len(block_size) != 3 or any(int(b) < 1 for b in block_size)):
            raise ValueError(f"block_size must be three positive ints (D, H, W), got {block_size}")
        self.root = Path(root)
        self.label_nc = int(label_nc)
        self.intensity = validate_intensity(intensity) if intensity is not None else None
        self.block_size = tuple(int(b) for b in block_size) if block_size is not None else None
        self.affine_atol = affine_atol
        self.class_names: list[str] | None = None
        self.manifest: dict[str, Any] | None = None
        #: Per-item metadata (manifest entry or {"id": ...}), aligned with ``self.items``.
        self.entries: list[dict[str, Any]] = []
        self.items: list[tuple[str, Path, Path]] = []

        manifest_path = Path(manifest) if manifest is not None else self.root / MANIFEST_NAME
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
            if self.split not in ("all", entry["split"]):
                continue
            image = path.parent / entry["image"]  # absolute entry paths stay absolute
            label = path.parent / entry["label"]
            sid = str(entry.get("id", strip_nifti_suffix(image.name)))
            self.items.append((sid, image, label))
            self.entries.append(dict(entry))
        self.manifest = manifest
        self.class_names = manifest.get("class_names")

    def _from_split_folders(self) -> None:
        for split in SPLITS if self.split == "all" else (self.split,):
            if (self.root / split / "images").is_dir():
                for sid, image, label in pair_folder(self.root / split / "images", self.root / split / "labels"):
                    self.items.append((sid, image, label))
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
            if self.split in ("all", assignment.get(sid)):
                self.items.append((sid, image, label))
                self.entries.append({"id": sid, "split": assignment.get(sid)})

    # --------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Load pair ``index``: image (1, D, H, W) float32 in [-1, 1], label (1, D, H, W) int64, affine, id."""
        sid, image_path, label_path = self.items[index]
        image, label, affine = load_pair(image_path, label_path, self.label_nc, self.affine_atol)
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
    ) -> None:
        label_nc = self.LABEL_NC if label_nc is None else label_nc
        name = self.NAME if name is None else name
        if label_nc is None or name is None:
            raise TypeError(f"{type(self).__name__} needs label_nc and name (or a subclass that sets them)")
        super().__init__(split=split, root=root, label_nc=label_nc, dataset_name=name)
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
