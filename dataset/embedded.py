"""What the embedded datasets (mni152, ct_abdomen) share: their config's common fields, the constructor, the cache
built once under a lock, and the built cache read as a :mod:`dataset.nifti_pairs` split.

Each dataset builds its subjects into a cache folder of NIfTI pairs with a manifest (the folder is named after
the hash of its config); checking the arguments, building that cache once and reading a split of it are the
same for all of them, so they are written once here. A dataset supplies its name, its config class, its class
names and how its cache is built.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from filelock import FileLock
from torch.utils.data import Dataset

from dataset.contract import Sample
from dataset.files import PRODUCER, atomic_write_json
from dataset.nifti import save_nifti
from dataset.nifti_pairs import NiftiPairsDataset
from dataset.splits import check_split, split_by_count
from dataset.transaction import MANIFEST_NAME

log = logging.getLogger(__name__)

#: The caveat of each embedded dataset's subjects, stated in every report that measures novelty or utility on them.
LOWER_BOUND_NOTES = {
    "mni152": "mni152 subjects are deformations of one template, so novelty and utility measured here are a lower "
    "bound of what real, varied anatomy needs.",
    "ct_abdomen": "ct_abdomen subjects are deformations of one abdominal CT slab, so novelty and utility measured "
    "here are a lower bound of what real, varied anatomy needs.",
}


@dataclass(frozen=True)
class EmbeddedConfig:
    """The settings every embedded dataset's subjects depend on; a dataset's config adds its own after them.

    Args:
        num_subjects: number of distinct subjects N (all splits together).
        size: output (D, H, W).
        seed: base seed of augmentation and split.
        num_val, num_test: subjects in val and test; the rest train.
        margin_mm: margin around the anatomy's bounding box.
    """

    num_subjects: int = 24
    size: tuple[int, int, int] = (32, 32, 32)
    seed: int = 0
    num_val: int = 4
    num_test: int = 4
    margin_mm: float = 6.0

    def validate(self) -> None:
        """Raise ``ValueError`` on invalid settings."""
        if len(self.size) != 3 or any(int(s) < 8 for s in self.size):
            raise ValueError(f"size must be three ints >= 8 (D, H, W), got {self.size}")
        split_by_count(self.num_subjects, self.num_val, self.num_test, self.seed)  # raises on bad counts
        if self.margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {self.margin_mm}")


def ensure_built(folder: Path, build: Callable[[Path], Any], what: str) -> tuple[Path, bool]:
    """Build ``folder`` once (marked complete by its manifest), under a file lock, atomically.

    Args:
        folder: the cache folder; its parent is created.
        build: writes everything, the manifest included, into the empty temporary folder it is given.
        what: logged while building.

    Returns:
        ``(folder, built)``: ``built`` is True when this call built it.
    """
    root = folder.parent
    if (folder / MANIFEST_NAME).is_file():
        return folder, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{folder.name}.lock")):
        if (folder / MANIFEST_NAME).is_file():  # another process built it while we waited
            return folder, False
        if folder.exists():  # a folder without manifest cannot come from a finished build: not ours to delete
            raise FileExistsError(f"{folder} exists without {MANIFEST_NAME}; remove it to rebuild the cache")
        tmp = root / f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp"
        tmp.mkdir()
        try:
            log.info("building %s in %s", what, folder)
            build(tmp)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


def write_subject(
    folder: Path,
    name: str,
    index: int,
    seed: int,
    split: str,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    label_nc: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write subject ``index`` (id ``<name>_s<index:04d>``) into a cache being built.

    Args:
        folder: the cache's temporary folder; the pair goes to ``images/<id>.nii.gz`` and ``labels/<id>.nii.gz``.
        name: the dataset's name.
        index, seed: the subject's index and its augmentation seed.
        split: its split.
        image: (D, H, W) float32 in [-1, 1]; label: (D, H, W) class indices < ``label_nc`` (written as uint8).
        affine: (4, 4) voxel-to-world matrix of both.
        extra: more fields of its manifest entry (e.g. its intensity record), before the class counts.

    Returns:
        The subject's manifest entry.
    """
    sid = f"{name}_s{index:04d}"
    save_nifti(folder / "images" / f"{sid}.nii.gz", image, affine, dtype=np.float32)
    save_nifti(folder / "labels" / f"{sid}.nii.gz", label, affine, dtype=np.uint8)
    return {"id": sid, "image": f"images/{sid}.nii.gz", "label": f"labels/{sid}.nii.gz", "split": split,
            "patient": sid, "subject_index": index, "subject_seed": seed, **(extra or {}),
            "class_counts": np.bincount(label.ravel(), minlength=label_nc).tolist()}  # fmt: skip


def write_manifest(
    folder: Path,
    name: str,
    modality: str,
    class_names: Sequence[str],
    intensity: Mapping[str, Any],
    affine: np.ndarray,
    config: EmbeddedConfig,
    config_hash: str,
    entries: list[dict[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest that completes a cache being built (:func:`ensure_built`) and return it.

    Args:
        folder: the cache's temporary folder.
        name, modality, class_names, intensity: the dataset's (``intensity``: the spec of the written images).
        affine: (4, 4) voxel-to-world matrix of every subject (their voxel size is recorded in (D, H, W) order).
        config, config_hash: what the subjects were built from, and its hash (the folder's name).
        entries: the subjects' entries (:func:`write_subject`).
        extra: more fields (e.g. the source's provenance), before the config.
    """
    voxel_size = [round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0)[[2, 0, 1]]]
    manifest = {"producer": PRODUCER, "format_version": 1, "dataset": name, "modality": modality,
                "label_nc": len(class_names), "class_names": list(class_names), "intensity": dict(intensity),
                "images_normalized": True, "voxel_size": voxel_size, **(extra or {}), "config": asdict(config),
                "config_hash": config_hash, "entries": entries}  # fmt: skip
    atomic_write_json(folder / MANIFEST_NAME, manifest, overwrite=False)
    return manifest


class EmbeddedPairs(Dataset):
    """A split of an embedded dataset, its cache built on first use (see the subclasses' docstrings).

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        root: cache root folder (e.g. ``${paths.data_dir}/<name>``).
        num_subjects: subjects across all splits.
        size: output (D, H, W); None: the config class's default.
        seed: base seed.
        num_val, num_test: subjects in val and test.
        label_nc: must be the dataset's class count (accepted so configs can pass ``${dataset.label_nc}``).
        margin_mm: margin around the anatomy's bounding box.
    """

    #: the dataset's name (cache folders, manifests, subject ids) and how messages call it
    name: ClassVar[str]
    title: ClassVar[str]
    config_class: ClassVar[type[EmbeddedConfig]]

    def __init__(
        self,
        split: str,
        root: str | Path,
        num_subjects: int = 24,
        size: Sequence[int] | None = None,
        seed: int = 0,
        num_val: int = 4,
        num_test: int = 4,
        label_nc: int | None = None,
        margin_mm: float = 6.0,
    ) -> None:
        super().__init__()
        check_split(split, allow_all=True)
        class_names = self.dataset_class_names()
        if label_nc is not None and label_nc != len(class_names):
            raise ValueError(f"the {self.title} dataset has {len(class_names)} classes, got label_nc={label_nc}")
        size = self.config_class.size if size is None else size
        if len(size) != 3:
            raise ValueError(f"size must be (D, H, W), got {size}")
        self.config = self.config_class(
            num_subjects=int(num_subjects),
            size=tuple(int(s) for s in size),
            seed=int(seed),
            num_val=int(num_val),
            num_test=int(num_test),
            margin_mm=float(margin_mm),
        )
        self.config.validate()
        self.label_nc = len(class_names)
        self.class_names = list(class_names)
        self.cache_dir, self.built = self.ensure_cache(Path(root))
        self._pairs = NiftiPairsDataset(
            split=split, root=self.cache_dir, label_nc=self.label_nc, dataset_name=self.name
        )
        self.split = split

    def dataset_class_names(self) -> Sequence[str]:
        """The dataset's class names, background first (their count is its ``label_nc``)."""
        raise NotImplementedError

    def ensure_cache(self, root: Path) -> tuple[Path, bool]:
        """The cache folder of ``self.config`` under ``root``, built if missing (:func:`ensure_built`)."""
        raise NotImplementedError

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Manifest entries of this split (subject index, seed, class counts, ...)."""
        return self._pairs.entries

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> Sample:
        """Subject ``index`` of the split: image (1, D, H, W) in [-1, 1], label (1, D, H, W) class indices."""
        return self._pairs[index]
