"""Mapping stored intensities to [0, 1], the one range every evaluation metric works in.

A volume stored in ``[lo, hi]`` maps to ``(v - lo) / (hi - lo)``. Examples: generated or preprocessed
volumes in [-1, 1] use ``lo, hi = -1, 1``; CT in Hounsfield units with the training window use
``-1000, 1000``. Voxels outside ``[lo, hi]`` are an error unless clipping is asked for, in which case they
are clipped to the bounds and *counted* (the count goes into the report). Values within a rounding tolerance
of ``1e-5 * (hi - lo)`` outside the bounds (float32 round-off of a tanh output or an inverse window) are
clamped without counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataset import DataError

ROUNDING_TOL = 1e-5


@dataclass
class IntensityRange:
    """A stated data range and the clipping policy, with a tally of what was clipped.

    Args:
        lo: stored value that maps to 0.
        hi: stored value that maps to 1.
        clip: clip (and count) voxels outside [lo, hi] instead of raising DataError.
    """

    lo: float
    hi: float
    clip: bool = False
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
            "mapping": f"(v - ({self.lo:g})) / ({self.hi:g} - ({self.lo:g})) -> [0, 1]",
            "clip": self.clip,
            "rounding_tolerance": ROUNDING_TOL * (self.hi - self.lo),
            "clipped_voxels": self.clipped_voxels,
            "total_voxels": self.total_voxels,
            "clipped_files": dict(self.clipped_files),
        }
