"""Cutting fixed-size (D, H, W) blocks out of volumes, with padding for volumes smaller than a block.

Block starts are (D, H, W) voxel offsets into the volume; a negative start means the block begins before the
volume (it is padded there). :func:`dataset.nifti.shift_affine` turns a start into the block's affine.

Samplers:
- ``grid`` (default): along each axis the fewest blocks that cover the whole axis, their starts spread
  evenly from 0 to ``size - block`` (neighbours overlap as little as possible); an axis shorter than the block
  gets one centred, padded block. Deterministic; every voxel lands in at least one block.
- ``random``: ``count`` blocks with starts drawn uniformly from the valid range by a seeded generator, so a
  rerun cuts the same blocks; an axis shorter than the block is padded as above.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

Start = tuple[int, int, int]
BLOCK_SAMPLERS = ("grid", "random")


def axis_starts(size: int, block: int) -> list[int]:
    """Grid starts along one axis (see module docstring)."""
    if size <= block:
        return [-((block - size) // 2)]
    count = math.ceil(size / block)
    return sorted({int(round(s)) for s in np.linspace(0, size - block, count)})


def grid_block_starts(shape: tuple[int, int, int], block: tuple[int, int, int]) -> list[Start]:
    """All grid block starts of a (D, H, W) volume, in D-major order."""
    per_axis = [axis_starts(n, b) for n, b in zip(shape, block)]
    return [tuple(s) for s in itertools.product(*per_axis)]  # type: ignore[misc]


def random_block_starts(
    shape: tuple[int, int, int], block: tuple[int, int, int], count: int, rng: np.random.Generator
) -> list[Start]:
    """``count`` seeded random block starts of a (D, H, W) volume."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    starts = []
    for _ in range(count):
        start = []
        for n, b in zip(shape, block):
            start.append(-((b - n) // 2) if n <= b else int(rng.integers(0, n - b + 1)))
        starts.append(tuple(start))
    return starts  # type: ignore[return-value]


def block_starts(
    shape: tuple[int, int, int],
    block: tuple[int, int, int],
    sampler: str = "grid",
    count: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[Start]:
    """Block starts for one volume.

    Args:
        shape: (D, H, W) of the volume.
        block: (D, H, W) block size.
        sampler: ``grid`` or ``random``.
        count: number of blocks for ``random`` (default: as many as the grid has).
        rng: generator for ``random`` (required there).
    """
    if sampler == "grid":
        return grid_block_starts(shape, block)
    if sampler == "random":
        if rng is None:
            raise ValueError("the random block sampler needs a seeded numpy Generator")
        return random_block_starts(shape, block, count or len(grid_block_starts(shape, block)), rng)
    raise ValueError(f"sampler must be one of {BLOCK_SAMPLERS}, got {sampler!r}")


def extract_block(array: np.ndarray, start: Start, block: tuple[int, int, int], pad_value: float) -> np.ndarray:
    """Cut a (D, H, W) block at ``start``; parts outside ``array`` are filled with ``pad_value``.

    Args:
        array: (D, H, W) volume.
        start: block start, may be negative or reach past the end.
        block: (D, H, W) block size.
        pad_value: fill value (e.g. -1 for normalised images, 0 = background for labels).

    Returns:
        (D, H, W) array of ``block`` size and ``array``'s dtype.
    """
    out = np.full(block, pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, b, n in zip(start, block, array.shape):
        lo, hi = max(s, 0), min(s + b, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def center_crop_or_pad_start(shape: tuple[int, int, int], block: tuple[int, int, int]) -> Start:
    """Start of the centred block of size ``block`` (crop where the volume is larger, pad where smaller)."""
    return tuple((n - b) // 2 if n >= b else -((b - n) // 2) for n, b in zip(shape, block))  # type: ignore[return-value]
