"""AutoPET whole-body CT with 37-class label maps: raw layout, discovery, preprocessing and the dataset.

Raw layout (the reference implementation's ``imagesTr`` folder; pass it, or its parent, as ``--src``)::

    SRC/<case>_0001.nii.gz    CT in Hounsfield units
    SRC/<case>_0002.nii.gz    label map on the CT grid, values 0-36 (dataset/label_tables/autopet.yaml)

``<case>`` is the whole file name before ``_0001`` (the reference cut names at the first underscore, which made
every ``PETCT_...`` case collide). By default each case is its own patient; ``patient_regex`` (first group, or
the whole match) extracts a patient id from the case id so that several studies of one patient share a split,
e.g. ``'^(PETCT_[0-9a-f]+)'``.

Preprocess: ``python scripts/preprocess_autopet.py --src RAW/imagesTr --dst DATA/autopet`` (CT window
[-1000, 1000] HU -> [-1, 1] by default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dataset.contract import DataError
from dataset.label_table import LabelTable, load_label_table
from dataset.nifti_pairs import PreprocessedDataset
from dataset.preprocess import Case, PreprocessOptions, preprocess

NAME = "autopet"
LABEL_NC = 37
MODALITY = "ct"
DEFAULT_INTENSITY: dict[str, Any] = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0}
IMAGE_SUFFIX = "_0001.nii.gz"
LABEL_SUFFIX = "_0002.nii.gz"


def patient_of(case_id: str, patient_regex: str | None, source: Path) -> str:
    """Patient id of a case: the regex's first group (or whole match), or the case id without a regex."""
    if patient_regex is None:
        return case_id
    match = re.match(patient_regex, case_id)
    if match is None:
        raise DataError(f"{source}: case id {case_id!r} does not match patient regex {patient_regex!r}")
    return match.group(1) if match.groups() else match.group(0)


def discover_autopet(src: str | Path, patient_regex: str | None = None) -> list[Case]:
    """List the cases of a raw AutoPET folder (layout in the module docstring).

    Raises:
        DataError: no CT files, or a CT without its label (or a label without its CT).
    """
    src = Path(src)
    folder = src / "imagesTr" if (src / "imagesTr").is_dir() else src
    if not folder.is_dir():
        raise DataError(f"{folder}: raw AutoPET folder not found")
    cts = sorted(folder.glob(f"*{IMAGE_SUFFIX}"))
    labels = sorted(folder.glob(f"*{LABEL_SUFFIX}"))
    if not cts:
        raise DataError(f"{folder}: no *{IMAGE_SUFFIX} CT files; expected <case>{IMAGE_SUFFIX} + <case>{LABEL_SUFFIX}")
    ct_ids = {p.name[: -len(IMAGE_SUFFIX)] for p in cts}
    for label in labels:
        if label.name[: -len(LABEL_SUFFIX)] not in ct_ids:
            ct = folder / label.name.replace(LABEL_SUFFIX, IMAGE_SUFFIX)
            raise DataError(f"{ct}: CT partner of label {label} not found")
    cases = []
    for ct in cts:
        case_id = ct.name[: -len(IMAGE_SUFFIX)]
        label = folder / f"{case_id}{LABEL_SUFFIX}"
        if not label.is_file():
            raise DataError(f"{label}: label partner of CT {ct} not found")
        cases.append(Case(case_id=case_id, patient=patient_of(case_id, patient_regex, ct), image=ct, label=label))
    return cases


def preprocess_autopet(
    src: str | Path,
    dst: str | Path,
    options: PreprocessOptions | None = None,
    patient_regex: str | None = None,
    table: str | Path | LabelTable = NAME,
) -> dict[str, Any]:
    """Discover, split, block and write AutoPET (see :func:`dataset.preprocess.preprocess`).

    Args:
        src: raw folder (module docstring).
        dst: output folder.
        options: run settings; default: paper block size and the CT window.
        patient_regex: see module docstring.
        table: label table name, YAML path or object.

    Returns:
        The manifest.
    """
    options = options or PreprocessOptions(intensity=dict(DEFAULT_INTENSITY))
    label_table = table if isinstance(table, LabelTable) else load_label_table(table)
    cases = discover_autopet(src, patient_regex)
    return preprocess(NAME, cases, dst, label_table, options, src_root=src, modality=MODALITY)


class AutoPETDataset(PreprocessedDataset):
    """Preprocessed AutoPET blocks (``root`` = the ``--dst`` of preprocessing).

    Arguments as :class:`~dataset.nifti_pairs.PreprocessedDataset`; ``label_nc`` must be 37.
    """

    NAME = NAME
    LABEL_NC = LABEL_NC
