"""AutoPET whole-body CT with 37-class label maps: raw layout, discovery, preprocessing and the dataset.

Raw layout (the reference implementation's ``imagesTr`` folder; pass it, or its parent, as ``--src``)::

    SRC/<case>_0001.nii.gz    CT in Hounsfield units
    SRC/<case>_0002.nii.gz    label map on the CT grid, values 0-36 (dataset/label_tables/autopet.yaml)

``<case>`` is the whole file name before ``_0001`` (the reference cut names at the first underscore, which made
every ``PETCT_...`` case collide). AutoPET names a study ``PETCT_<patient hash>_<study>`` (the nnU-Net export
numbers a patient's studies ``_0``, ``_1``, ...; exports from the original folders append the study date), so
by default the patient is the ``PETCT_<hash>`` part (:data:`DEFAULT_PATIENT_REGEX`) and all studies of one
patient land in the same split: splitting them would leak test patients into training. ``patient_regex``
(first group, or the whole match) replaces that rule, e.g. ``'^(.*)$'`` for one patient per case. Case ids that
do not follow AutoPET naming are their own patient; when several of them look like studies of one patient
(same name up to a last ``_<suffix>``) a warning asks for a ``--patient-regex``.

Preprocess: ``python scripts/preprocess_autopet.py --src RAW/imagesTr --dst DATA/autopet`` (CT window
[-1000, 1000] HU -> [-1, 1] by default).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataset.contract import DataError
from dataset.label_table import LabelTable, load_label_table
from dataset.nifti_pairs import PreprocessedDataset
from dataset.preprocess import Case, PreprocessOptions, preprocess

log = logging.getLogger(__name__)

NAME = "autopet"
LABEL_NC = 37
MODALITY = "ct"
DEFAULT_INTENSITY: dict[str, Any] = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0}
IMAGE_SUFFIX = "_0001.nii.gz"
LABEL_SUFFIX = "_0002.nii.gz"
#: AutoPET's own naming: ``PETCT_<patient hash>`` followed by ``_<study>`` (index or date) or nothing.
DEFAULT_PATIENT_REGEX = r"^(PETCT_[0-9a-fA-F]+)(?:_|$)"


def patient_of(case_id: str, patient_regex: str | None, source: Path) -> str:
    """Patient id of a case: the regex's first group (or whole match).

    Without a regex, AutoPET's naming (:data:`DEFAULT_PATIENT_REGEX`) gives the patient; a case id that does not
    follow it is its own patient.
    """
    if patient_regex is None:
        match = re.match(DEFAULT_PATIENT_REGEX, case_id)
        return match.group(1) if match else case_id
    match = re.match(patient_regex, case_id)
    if match is None:
        raise DataError(f"{source}: case id {case_id!r} does not match patient regex {patient_regex!r}")
    return match.group(1) if match.groups() else match.group(0)


def warn_ungrouped_studies(case_ids: Sequence[str], patient_regex: str | None) -> list[str]:
    """Warn when case ids outside AutoPET naming look like several studies of one patient and no rule groups them.

    Two ids look like studies of one patient when they agree up to a last ``_<suffix>`` (``p7_study1`` and
    ``p7_study2``). Returns those ids (empty when there is nothing to warn about).
    """
    if patient_regex is not None:
        return []
    stems: dict[str, list[str]] = defaultdict(list)
    for case_id in case_ids:
        if re.match(DEFAULT_PATIENT_REGEX, case_id) is None and "_" in case_id:
            stems[case_id.rsplit("_", 1)[0]].append(case_id)
    suspects = sorted(c for ids in stems.values() if len(ids) > 1 for c in ids)
    if suspects:
        log.warning(
            "%d case ids look like several studies per patient (e.g. %s) but follow no grouping rule, so each is "
            "its own patient and one patient can land in two splits; pass --patient-regex (e.g. '^(.*)_[^_]+$')",
            len(suspects),
            ", ".join(suspects[:4]),
        )
    return suspects


def discover_autopet(src: str | Path, patient_regex: str | None = None) -> list[Case]:
    """List the cases of a raw AutoPET folder (layout in the module docstring).

    Raises:
        DataError: no CT files, or a CT without its label (or a label without its CT).
    """
    src = Path(src)
    folder = src / "imagesTr" if (src / "imagesTr").is_dir() else src
    if not folder.is_dir():
        raise DataError(f"{folder}: raw AutoPET folder not found")
    # Hidden files (macOS "._" copies, editors' temporaries) are not cases.
    cts = sorted(p for p in folder.glob(f"*{IMAGE_SUFFIX}") if not p.name.startswith("."))
    labels = sorted(p for p in folder.glob(f"*{LABEL_SUFFIX}") if not p.name.startswith("."))
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
    warn_ungrouped_studies([c.case_id for c in cases], patient_regex)
    n_patients = len({c.patient for c in cases})
    if n_patients < len(cases):
        log.info("%d studies of %d patients; a patient's studies share one split", len(cases), n_patients)
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
        patient_regex: see module docstring (default: AutoPET naming, ``PETCT_<hash>`` is the patient).
        table: label table name, YAML path or object.

    Returns:
        The manifest.
    """
    options = options or PreprocessOptions(intensity=dict(DEFAULT_INTENSITY))
    label_table = load_label_table(table)
    cases = discover_autopet(src, patient_regex)
    return preprocess(NAME, cases, dst, label_table, options, src_root=src, modality=MODALITY)


class AutoPETDataset(PreprocessedDataset):
    """Preprocessed AutoPET blocks (``root`` = the ``--dst`` of preprocessing).

    Arguments as :class:`~dataset.nifti_pairs.PreprocessedDataset`; ``label_nc`` must be 37.
    """

    NAME = NAME
    LABEL_NC = LABEL_NC
