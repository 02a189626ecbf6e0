"""Seeded, disjoint patient splits."""

from __future__ import annotations

import pytest

from dataset.splits import split_by_count, split_ids


def test_split_ids_is_seeded_disjoint_and_order_independent() -> None:
    ids = [f"p{i}" for i in range(20)]
    a = split_ids(ids, 0.2, 0.1, seed=4)
    b = split_ids(list(reversed(ids)), 0.2, 0.1, seed=4)
    assert a == b  # listing order does not matter (the reference split by os.listdir order)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 4, "test": 2}
    assert len({tuple(sorted(split_ids(ids, 0.2, 0.1, seed=s).items())) for s in range(5)}) > 1


def test_tiny_split_gets_one_patient_each_and_bad_fractions_raise() -> None:
    a = split_ids(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(a.values()) == ["test", "train", "val"]
    for bad in [(0.5, 0.5), (-0.1, 0.1)]:
        with pytest.raises(ValueError):
            split_ids(["a", "b", "c", "d"], *bad, seed=0)
    with pytest.raises(ValueError, match="keep one for training"):
        split_ids(["a", "b"], 0.1, 0.1, seed=0)


def test_split_by_count() -> None:
    s = split_by_count(10, 2, 3, seed=1)
    assert (s.count("train"), s.count("val"), s.count("test")) == (5, 2, 3)
    assert s == split_by_count(10, 2, 3, seed=1)
    with pytest.raises(ValueError):
        split_by_count(4, 2, 2, seed=0)
