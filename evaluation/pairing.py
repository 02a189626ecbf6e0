"""Pairing synthetic volumes with the real volume (or label map) of the same case.

Rule (also in the README): every file is keyed by its name without ``.nii``/``.nii.gz`` (its *stem*).
A reference file (real image or label map) ``<id>.nii.gz`` pairs with every synthetic file whose stem is
exactly ``<id>`` or ``<id>_s<k>`` with ``k`` a non-negative integer (the k-th sample drawn from that label map,
as ``scripts/generate.py`` writes them). An exact stem match is tried first, so a case id that itself ends
in ``_s<k>`` still pairs with its own file. Every reference needs at least one synthetic file and every
synthetic file needs its reference; anything left over is an error that lists the files. Nothing is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dataset import DataError
from evaluation.nifti_io import list_nifti

_SAMPLE_SUFFIX = re.compile(r"^(?P<id>.+)_s(?P<k>\d+)$")
_MAX_LISTED = 20


@dataclass(frozen=True)
class Pair:
    """One synthetic file and the reference of its case.

    Attributes:
        id: the case id (the reference file's stem).
        reference: the real image (or label map) file.
        synthetic: the synthetic file.
        sample: the ``k`` of an ``_s<k>`` suffix, None for an exact name match.
    """

    id: str
    reference: Path
    synthetic: Path
    sample: int | None


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def match_stem(stem: str, reference_ids: set[str] | dict[str, Path]) -> tuple[str, int | None] | None:
    """Case id and sample index of a synthetic stem, or None when it matches no reference id."""
    if stem in reference_ids:
        return stem, None
    m = _SAMPLE_SUFFIX.match(stem)
    if m and m.group("id") in reference_ids:
        return m.group("id"), int(m.group("k"))
    return None


def pair_folders(reference_dir: Path, synthetic_dir: Path) -> list[Pair]:
    """Pair every synthetic NIfTI in ``synthetic_dir`` with its reference in ``reference_dir``.

    Args:
        reference_dir: folder of ``<id>.nii[.gz]`` real images or label maps.
        synthetic_dir: folder of ``<id>.nii[.gz]`` or ``<id>_s<k>.nii[.gz]`` synthetic volumes.

    Returns:
        Pairs sorted by (id, sample).

    Raises:
        DataError: unmatched synthetic files or references without any synthetic file (both listed).
    """
    references = list_nifti(reference_dir)
    synthetics = list_nifti(synthetic_dir)
    pairs: list[Pair] = []
    unmatched: list[str] = []
    for stem, path in synthetics.items():
        hit = match_stem(stem, references)
        if hit is None:
            unmatched.append(path.name)
            continue
        case_id, sample = hit
        pairs.append(Pair(id=case_id, reference=references[case_id], synthetic=path, sample=sample))
    without = sorted(set(references) - {p.id for p in pairs})
    problems = []
    if unmatched:
        problems.append(
            f"{len(unmatched)} file(s) in {synthetic_dir} match no <id>.nii[.gz] in {reference_dir} "
            f"(expected <id> or <id>_s<k>): {_listing(unmatched)}"
        )
    if without:
        problems.append(
            f"{len(without)} file(s) in {reference_dir} have no synthetic counterpart in {synthetic_dir}: "
            f"{_listing([references[i].name for i in without])}"
        )
    if problems:
        raise DataError("cannot pair the folders: " + "; ".join(problems))
    return sorted(pairs, key=lambda p: (p.id, -1 if p.sample is None else p.sample))


def group_by_id(pairs: list[Pair]) -> dict[str, list[Pair]]:
    """Pairs grouped by case id, ids in sorted order."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.id, []).append(pair)
    return dict(sorted(groups.items()))
