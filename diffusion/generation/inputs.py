"""Which label maps to generate from: a NIfTI file, a folder, a glob, or a split of the configured dataset."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from dataset import DataError
from dataset.nifti import NIFTI_SUFFIXES, strip_nifti_suffix


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class LabelSource:
    """Where label maps come from: ``files`` (NIfTI paths) or a dataset ``split`` name (then ``files`` is empty)."""

    files: tuple[Path, ...] = ()
    split: str | None = None


def resolve_labels(spec: str) -> LabelSource:
    """Interpret ``--labels``.

    ``split=NAME`` selects a split (train/val/test) of the dataset the model was trained on; an existing file must be
    NIfTI; a folder contributes its ``*.nii``/``*.nii.gz`` files (sorted, not recursive); anything else is a glob.

    Raises:
        DataError: nothing matched, or a named file is not NIfTI.
    """
    if spec.startswith("split="):
        split = spec.split("=", 1)[1]
        if split not in ("train", "val", "test"):
            raise DataError(f"--labels {spec}: split must be train, val or test")
        return LabelSource(split=split)
    path = Path(spec)
    if path.is_file():
        if not is_nifti(path):
            raise DataError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        return LabelSource(files=(path,))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise DataError(f"{path}: folder holds no .nii/.nii.gz label maps")
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file() and is_nifti(Path(p)))
        if not files:
            raise DataError(f"--labels {spec}: no such file or folder, and the pattern matches no NIfTI file")
    ids = [strip_nifti_suffix(p.name) for p in files]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"--labels {spec}: several files share the name(s) {dupes}; their outputs would collide")
    return LabelSource(files=tuple(files))
