"""Intensity normalisation: CT window (invertible inside the window), percentiles, reference min-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.contract import DataError
from dataset.intensity import (
    ct_window,
    invert,
    invert_ct_window,
    minmax_normalize,
    normalize,
    percentile_normalize,
    validate_intensity,
)


def test_ct_window_known_values_and_inverse() -> None:
    hu = np.array([-2000.0, -1000.0, -500.0, 0.0, 400.0, 1000.0, 3000.0])
    x = ct_window(hu, -1000, 1000)
    np.testing.assert_allclose(x, [-1, -1, -0.5, 0, 0.4, 1, 1])
    # Inside the window the inverse is exact; outside it returns the window edge (the documented clipping).
    np.testing.assert_allclose(invert_ct_window(x, -1000, 1000), np.clip(hu, -1000, 1000), atol=1e-9)
    spec = {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000}
    t = torch.linspace(-1, 1, 11)
    torch.testing.assert_close(invert(t, spec), t * 1000, atol=1e-3, rtol=0)  # tensors too (generation outputs)
    torch.testing.assert_close(invert(torch.tensor([1.2]), spec), torch.tensor([1000.0]))


def test_custom_window_round_trip() -> None:
    hu = np.random.default_rng(0).uniform(-160, 240, 1000)
    y, _ = normalize(hu, {"kind": "ct_window", "hu_min": -160, "hu_max": 240})
    assert y.dtype == np.float32 and y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(invert(y, {"kind": "ct_window", "hu_min": -160, "hu_max": 240}), hu, atol=1e-3)


def test_percentile_scaling_records_the_percentiles() -> None:
    x = np.arange(1001, dtype=np.float64)  # percentiles are exact on 0..1000
    y, record = percentile_normalize(x, 1.0, 99.0)
    assert record == {"p_lower": 10.0, "p_upper": 990.0}
    assert y.min() == -1 and y.max() == 1 and y[10] == -1 and y[990] == 1
    np.testing.assert_allclose(y[500], 0.0, atol=1e-6)


def test_percentile_constant_volume_is_a_data_error() -> None:
    with pytest.raises(DataError, match="flat.nii.gz: percentiles"):
        percentile_normalize(np.ones(10), source="flat.nii.gz")


def test_reference_minmax() -> None:
    y, record = minmax_normalize(np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(y, [-1, 0, 1])
    assert record == {"min": 2.0, "max": 6.0}
    assert (minmax_normalize(np.full(3, 7.0))[0] == -1).all()


def test_none_kind_checks_range() -> None:
    normalize(np.array([-1.0, 0.5]), None)
    with pytest.raises(DataError, match="raw.nii.gz: intensities"):
        normalize(np.array([-1.0, 300.0]), {"kind": "none"}, source="raw.nii.gz")


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "zscore"},
        {"kind": "ct_window", "hu_min": 5, "hu_max": 5},
        {"kind": "percentile", "lower": 60, "upper": 40},
        {"kind": "ct_window", "lower": 1},
        {"kind": "percentile", "invertible": True},
    ],
    ids=["kind", "window", "percentiles", "unknown-key", "invertible-flag"],
)
def test_invalid_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        validate_intensity(spec)


@pytest.mark.parametrize("kind", ["percentile", "reference"])
def test_non_invertible_kinds_refuse_to_invert(kind: str) -> None:
    with pytest.raises(ValueError, match="not invertible"):
        invert(np.zeros(3), {"kind": kind})
