"""SynthRAD2023 Task 1 pelvis: MR images with 31-class labels derived from the paired CT.

Raw layout (the SynthRAD2023 release plus a folder of label maps made from the CTs)::

    SRC/<patient>/mr.nii.gz                 MR (the image we model)
    SRC/<patient>/ct.nii.gz, mask.nii.gz    present in the release; not used (the paper trained "without mask")
    SRC/overview/                           release metadata; ignored
    LABELS/<patient>_ct_label.nii.gz        label map on the MR/CT grid, values 0-30
                                            (dataset/label_tables/synthrad2023.yaml); LABELS defaults to SRC/labels

Every other folder in SRC must be a patient with ``mr.nii.gz``; each patient needs its label file.

Preprocess: ``python scripts/preprocess_synthrad2023.py --src RAW/Task1/pelvis --labels RAW/synth2023_label
--dst DATA/synthrad2023`` (MR percentiles 0.5/99.5 -> [-1, 1] by default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dataset.contract import DataError
from dataset.label_table import LabelTable, load_label_table
from dataset.nifti_pairs import PreprocessedDataset
from dataset.preprocess import Case, PreprocessOptions, preprocess

log = logging.getLogger(__name__)

NAME = "synthrad2023"
LABEL_NC = 31
MODALITY = "mr"
DEFAULT_INTENSITY: dict[str, Any] = {"kind": "percentile", "lower": 0.5, "upper": 99.5}
IGNORED_FOLDERS = ("overview",)
LABEL_SUFFIX = "_ct_label.nii.gz"


def discover_synthrad2023(src: str | Path, labels: str | Path | None = None) -> list[Case]:
    """List the patients of a raw SynthRAD2023 Task 1 pelvis folder (layout in the module docstring).

    Raises:
        DataError: no patients, a patient folder without ``mr.nii.gz``, a missing label file, or a label
            file whose patient folder is missing.
    """
    src = Path(src)
    labels_dir = Path(labels) if labels is not None else src / "labels"
    if not src.is_dir():
        raise DataError(f"{src}: raw SynthRAD2023 folder not found")
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: label folder not found (pass --labels)")
    cases = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if folder.name in IGNORED_FOLDERS or folder.resolve() == labels_dir.resolve() or folder.name.startswith("."):
            log.debug("ignoring %s (not a patient folder)", folder)
            continue
        mr = folder / "mr.nii.gz"
        if not mr.is_file():
            raise DataError(f"{mr}: MR image not found in patient folder {folder}")
        label = labels_dir / f"{folder.name}{LABEL_SUFFIX}"
        if not label.is_file():
            raise DataError(f"{label}: label partner of {mr} not found")
        cases.append(Case(case_id=folder.name, patient=folder.name, image=mr, label=label))
    if not cases:
        raise DataError(f"{src}: no patient folders with mr.nii.gz")
    known = {c.case_id for c in cases}
    for label in sorted(labels_dir.glob(f"*{LABEL_SUFFIX}")):
        if label.name.startswith("."):  # hidden copies (macOS "._") are not label maps
            continue
        if label.name[: -len(LABEL_SUFFIX)] not in known:
            mr = src / label.name[: -len(LABEL_SUFFIX)] / "mr.nii.gz"
            raise DataError(f"{mr}: image partner of label {label} not found")
    return cases


def preprocess_synthrad2023(
    src: str | Path,
    dst: str | Path,
    options: PreprocessOptions | None = None,
    labels: str | Path | None = None,
    table: str | Path | LabelTable = NAME,
) -> dict[str, Any]:
    """Discover, split, block and write SynthRAD2023 (see :func:`dataset.preprocess.preprocess`).

    Args:
        src: raw pelvis folder.
        dst: output folder.
        options: run settings; default: paper block size and MR percentile scaling.
        labels: label folder (default ``src/labels``).
        table: label table name, YAML path or object.
    """
    options = options or PreprocessOptions(intensity=dict(DEFAULT_INTENSITY))
    label_table = load_label_table(table)
    cases = discover_synthrad2023(src, labels)
    return preprocess(NAME, cases, dst, label_table, options, src_root=src, modality=MODALITY)


class SynthRAD2023Dataset(PreprocessedDataset):
    """Preprocessed SynthRAD2023 MR blocks (``root`` = the ``--dst`` of preprocessing).

    Arguments as :class:`~dataset.nifti_pairs.PreprocessedDataset`; ``label_nc`` must be 31.
    """

    NAME = NAME
    LABEL_NC = LABEL_NC
