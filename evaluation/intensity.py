"""Mapping stored intensities to [0, 1], the one range every evaluation metric works in.

A volume stored in ``[lo, hi]`` maps to ``(v - lo) / (hi - lo)``. Examples: generated or preprocessed
volumes in [-1, 1] use ``lo, hi = -1, 1``; CT in Hounsfield units with the training window use
``-1000, 1000``. Voxels outside ``[lo, hi]`` are an error unless clipping is asked for, in which case they
are clipped to the bounds and *counted* (the count goes into the report). Values within a rounding tolerance
of ``1e-5 * (hi - lo)`` outside the bounds (float32 round-off of a tanh output or an inverse window) are
clamped without counting.

There is no default range (SPEC section 10: no silent default that changes a number; assuming [-1, 1] for
volumes stored in [0, 1] scores PSNR 6 dB too high). :func:`resolve_range` takes, for each folder, the range
stated on the command line, else the range recorded with the files (:func:`recorded_range`), else refuses with
the volumes' observed minimum and maximum.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataset import DataError
from dataset.files import read_run_record

logger = logging.getLogger(__name__)

ROUNDING_TOL = 1e-5
GENERATION_RECORD = "generation.json"
MANIFEST = "manifest.json"
_MAX_OBSERVED_FILES = 64  # the range error reads at most this many volumes to show their min/max


@dataclass
class IntensityRange:
    """A stated data range and the clipping policy, with a tally of what was clipped.

    Args:
        lo: stored value that maps to 0.
        hi: stored value that maps to 1.
        clip: clip (and count) voxels outside [lo, hi] instead of raising DataError; a volume with *every* voxel
            outside is refused all the same (a wrong range, not a few outliers).
        source: where the range comes from (a command-line option or the record it was read from).
    """

    lo: float
    hi: float
    clip: bool = False
    source: str = "stated"
    clipped_voxels: int = field(default=0, init=False)
    total_voxels: int = field(default=0, init=False)
    clipped_files: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)) or self.hi <= self.lo:
            raise ValueError(f"data range must be finite with lo < hi, got [{self.lo}, {self.hi}]")

    def to_unit(self, volume: np.ndarray, source: str) -> np.ndarray:
        """Map a volume to [0, 1].

        Args:
            volume: any-shape array in the stored units.
            source: file name quoted in errors and in the clipping tally.

        Returns:
            float32 array of the same shape in [0, 1].

        Raises:
            DataError: voxels beyond the rounding tolerance outside [lo, hi] and ``clip`` is False.
        """
        tol = ROUNDING_TOL * (self.hi - self.lo)
        outside = int(np.count_nonzero((volume < self.lo - tol) | (volume > self.hi + tol)))
        if outside and not self.clip:
            raise DataError(
                f"{source}: {outside} voxel(s) ({100.0 * outside / volume.size:.3g}%) outside the stated data range "
                f"[{self.lo:g}, {self.hi:g}] (min {float(volume.min()):g}, max {float(volume.max()):g}); state the "
                f"range the volumes are stored in (--data-range / --real-range / --fake-range), or pass --clip to "
                f"clip them (the count is reported)"
            )
        if outside and outside == volume.size:  # clipping everything leaves a constant volume: the range is wrong
            raise DataError(
                f"{source}: every voxel lies outside the stated data range [{self.lo:g}, {self.hi:g}] (min "
                f"{float(volume.min()):g}, max {float(volume.max()):g}); state the range the volumes are stored in"
            )
        self.total_voxels += int(volume.size)
        if outside:
            self.clipped_voxels += outside
            self.clipped_files[source] = outside
        unit = (volume.astype(np.float64) - self.lo) / (self.hi - self.lo)
        return np.clip(unit, 0.0, 1.0).astype(np.float32)

    def describe(self) -> dict:
        """JSON-ready settings and clipping tally."""
        return {
            "range": [self.lo, self.hi],
            "source": self.source,
            "mapping": f"(v - ({self.lo:g})) / ({self.hi:g} - ({self.lo:g})) -> [0, 1]",
            "clip": self.clip,
            "rounding_tolerance": ROUNDING_TOL * (self.hi - self.lo),
            "clipped_voxels": self.clipped_voxels,
            "total_voxels": self.total_voxels,
            "clipped_files": dict(self.clipped_files),
        }


def range_of_intensity(spec: Mapping[str, Any]) -> tuple[float, float]:
    """Units generated volumes are written in, given the dataset's intensity spec (``dataset.intensity``).

    Generation inverts an invertible normalisation: ``ct_window`` volumes are written in HU within the
    window; every other kind stays in the model's [-1, 1].
    """
    from dataset.intensity import validate_intensity

    checked = validate_intensity(spec)
    if checked["kind"] == "ct_window":
        return checked["hu_min"], checked["hu_max"]
    return -1.0, 1.0


def _pair(value: object) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if np.isfinite(lo) and np.isfinite(hi) and lo < hi:
            return lo, hi
    return None


def _describes(record_dir: Path, folder: Path, relpaths: list[object]) -> bool:
    """Whether any of the record's relative file paths lies directly in ``folder``."""
    for rel in relpaths:
        if isinstance(rel, str) and rel and not Path(rel).is_absolute():
            if (record_dir / rel).parent.resolve() == folder:
                return True
    return False


def _from_generation(folder: Path) -> tuple[float, float, str] | None:
    for record_dir in (folder, folder.parent):
        path = record_dir / GENERATION_RECORD
        record = read_run_record(path)
        if record is None:
            continue
        if record_dir != folder and not _describes(record_dir, folder, list(record.get("outputs") or [])):
            continue
        rng = _pair(record.get("data_range"))
        if rng is not None:
            return (*rng, f"{path} (data_range)")
        if isinstance(record.get("intensity"), Mapping):
            try:
                return (*range_of_intensity(record["intensity"]), f"{path} (intensity {record['intensity']})")
            except ValueError as err:
                raise DataError(f"{path}: unusable intensity record ({err})") from None
    return None


def _from_manifest(folder: Path) -> tuple[float, float, str] | None:
    from dataset.transaction import manifest_is_ours

    for record_dir in (folder, folder.parent, folder.parent.parent, folder.parent.parent.parent):
        path = record_dir / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not manifest_is_ours(manifest):  # only a manifest our preprocessing wrote states a range
            continue
        images = [e.get("image") for e in manifest["entries"] if isinstance(e, dict)]
        if not _describes(record_dir, folder, images):
            continue
        rng = _pair(manifest.get("data_range"))
        if rng is not None:
            return (*rng, f"{path} (data_range)")
        if manifest.get("images_normalized") is True:  # preprocessing writes [-1, 1] (dataset.preprocess)
            return -1.0, 1.0, f"{path} (images_normalized)"
    return None


def recorded_range(folder: Path) -> tuple[float, float, str] | None:
    """The intensity range recorded with the volumes of ``folder``, with where it was read, or None.

    Looked for, in order:

    - generation's run record ``generation.json`` (``scripts/generate.py``) in the folder, or in its parent
      when the record lists outputs in the folder: its ``data_range`` ``[lo, hi]``, else its ``intensity``
      spec (:func:`range_of_intensity`);
    - preprocessing's ``manifest.json`` (``dataset.transaction.manifest_is_ours``) in the folder or up to three
      levels above it (``DST/blocks-<id>/<split>/images``) when one of its entries lies in the folder: its
      ``data_range``, else [-1, 1] when ``images_normalized``.

    Only plain values are read from the records.
    """
    resolved = Path(folder).resolve()
    found = _from_generation(resolved) or _from_manifest(resolved)
    if found is None:
        return None
    # the source goes into shared reports: named relative to the folder the user gave, never by an absolute path
    lo, hi, source = found
    for up, base in enumerate((resolved, *resolved.parents)):
        prefix = f"{base}{os.sep}"
        if source.startswith(prefix):
            shown = Path(folder, *[".."] * up, source[len(prefix) :].split(" ", 1)[0])
            return lo, hi, f"{shown} {source[len(prefix) :].split(' ', 1)[1]}" if " " in source else str(shown)
    return found


def observed_range(paths: list[Path]) -> tuple[float, float, int]:
    """(min, max, files read) over the first few volumes, for the error that asks for a range."""
    from dataset.nifti import load_image

    lo, hi, n = np.inf, -np.inf, 0
    for path in paths[:_MAX_OBSERVED_FILES]:
        data, _ = load_image(path)
        lo, hi, n = min(lo, float(data.min())), max(hi, float(data.max())), n + 1
    return lo, hi, n


def resolve_range(
    folder: Path,
    stated: tuple[float, float] | None,
    options: tuple[str, ...],
    what: str,
    files: list[Path],
    clip: bool = False,
    warnings: list[str] | None = None,
) -> IntensityRange:
    """The range the volumes of ``folder`` are mapped from: stated, else recorded, else a one-line error.

    Args:
        folder: the folder of volumes.
        stated: range given on the command line (by one of ``options``), or None.
        options: the options that state it, quoted in messages (``("--data-range", "--real-range")``).
        what: the role of the folder in messages (``--real DIR``).
        files: its NIfTI files (read only for the error message).
        clip: clipping policy of the returned range.
        warnings: list that collects a warning when a stated range differs from the recorded one.

    Raises:
        DataError: no range stated and none recorded (the message shows the volumes' observed min/max).
    """
    recorded = recorded_range(folder)
    if stated is not None:
        lo, hi = (float(v) for v in stated)
        option = " / ".join(options)
        rng = IntensityRange(lo, hi, clip=clip, source=f"the command line ({option})")
        if recorded is not None and (recorded[0], recorded[1]) != (lo, hi):
            msg = (
                f"{what}: {option} [{lo:g}, {hi:g}] overrides the range [{recorded[0]:g}, {recorded[1]:g}] "
                f"recorded in {recorded[2]}"
            )
            logger.warning("%s", msg)
            if warnings is not None:
                warnings.append(msg)
        return rng
    if recorded is not None:
        logger.info("%s: data range [%g, %g] from %s", what, recorded[0], recorded[1], recorded[2])
        return IntensityRange(recorded[0], recorded[1], clip=clip, source=recorded[2])
    lo, hi, n = observed_range(list(files))
    raise DataError(
        f"{what} {folder}: no data range is recorded with these volumes (no generation.json run record or "
        f"preprocessing manifest.json describes them) and none was given; their values lie in [{lo:.6g}, "
        f"{hi:.6g}] ({n} of {len(files)} files read): pass {' or '.join(f'{o} LO HI' for o in options)} with the "
        f"range they are stored in (e.g. -1 1 for the model's scale, -1000 1000 for CT in HU)"
    )
