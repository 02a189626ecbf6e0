"""Seeded, disjoint train/val/test splits (by patient for real data, by subject index for embedded data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def check_split(split: str, allow_all: bool = False) -> str:
    """Return ``split`` if valid (``train``/``val``/``test``, plus ``all`` when allowed), else ``ValueError``."""
    valid = SPLITS + (("all",) if allow_all else ())
    if split not in valid:
        raise ValueError(f"split must be one of {valid}, got {split!r}")
    return split


def _count(frac: float, n: int) -> int:
    # A requested non-zero fraction always gets at least one item, so tiny datasets still have val/test data.
    return 0 if frac == 0 else max(1, round(frac * n))


def split_ids(ids: Sequence[str], val_frac: float, test_frac: float, seed: int) -> dict[str, str]:
    """Assign each id (patient) to one split with a seeded permutation of the *sorted* ids.

    Sorting first makes the result independent of file-system listing order (the reference split by
    ``os.listdir`` order). A non-zero fraction gets at least one id.

    Args:
        ids: patient ids (duplicates are collapsed).
        val_frac, test_frac: fractions in [0, 1) with ``val_frac + test_frac < 1``.
        seed: permutation seed.

    Returns:
        ``{id: "train" | "val" | "test"}``.

    Raises:
        ValueError: invalid fractions, or too few ids to leave at least one for training.
    """
    if not (0.0 <= val_frac < 1.0 and 0.0 <= test_frac < 1.0 and val_frac + test_frac < 1.0):
        raise ValueError(f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}")
    unique = sorted(set(ids))
    n = len(unique)
    n_test, n_val = _count(test_frac, n), _count(val_frac, n)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{n} patients cannot fill val ({n_val}) and test ({n_test}) and keep one for training; "
            "lower --val-frac/--test-frac or add data"
        )
    order = np.random.default_rng(seed).permutation(n)
    out: dict[str, str] = {}
    for rank, idx in enumerate(order):
        out[unique[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def split_by_count(n: int, num_val: int, num_test: int, seed: int) -> list[str]:
    """Split item indices ``0..n-1`` into fixed-size disjoint sets with a seeded permutation.

    Returns:
        ``splits[i]`` is the split of item ``i``.

    Raises:
        ValueError: negative counts or no item left for training.
    """
    if num_val < 0 or num_test < 0 or n - num_val - num_test < 1:
        raise ValueError(f"cannot split {n} items into val={num_val}, test={num_test} and >= 1 train")
    splits = ["train"] * n
    order = np.random.default_rng(seed).permutation(n)
    for rank, idx in enumerate(order[: num_test + num_val]):
        splits[int(idx)] = "test" if rank < num_test else "val"
    return splits
