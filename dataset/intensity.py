"""Intensity normalisation to [-1, 1] (SPEC 4.2) and its inverse where one exists.

An ``intensity`` spec is a plain dict, the same one the dataset yaml carries, so generation can undo it:

- ``{kind: ct_window, hu_min: -1000, hu_max: 1000}``: clip CT to the HU window (the documented transform,
  values outside the window are not recoverable), then scale linearly to [-1, 1]. Invertible inside the window
  (:func:`invert`).
- ``{kind: percentile, lower: 0.5, upper: 99.5}``: MR. The ``lower``/``upper`` percentiles of each *volume*
  map to -1/1, values beyond them are clipped. Not invertible without the per-volume record that
  :func:`normalize` returns (preprocessing stores it in the manifest).
- ``{kind: reference}``: per-block min-max to [-1, 1], as the reference implementation did (for comparison;
  block statistics are returned as the record).
- ``{kind: none}``: data already in [-1, 1] (e.g. preprocessed blocks); nothing is done.

Functions accept numpy arrays or torch tensors where noted and return the same type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from dataset.contract import DataError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

INTENSITY_KINDS = ("ct_window", "percentile", "reference", "none")
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
DEFAULT_PERCENTILES = (0.5, 99.5)


def ct_window(hu: ArrayT, hu_min: float = DEFAULT_HU_WINDOW[0], hu_max: float = DEFAULT_HU_WINDOW[1]) -> ArrayT:
    """Clip HU to ``[hu_min, hu_max]`` and map that window linearly to [-1, 1].

    Args:
        hu: CT values in Hounsfield units, any shape (numpy or torch).
        hu_min, hu_max: window bounds, ``hu_min < hu_max``.
    """
    _check_window(hu_min, hu_max)
    clipped = hu.clip(hu_min, hu_max)
    return (clipped - hu_min) * (2.0 / (hu_max - hu_min)) - 1.0


def invert_ct_window(x: ArrayT, hu_min: float = DEFAULT_HU_WINDOW[0], hu_max: float = DEFAULT_HU_WINDOW[1]) -> ArrayT:
    """Map [-1, 1] back to HU in ``[hu_min, hu_max]`` (inverse of :func:`ct_window` inside the window).

    Values of ``x`` outside [-1, 1] (a generator overshooting) are clipped first so the result stays in the
    window the model was trained on.
    """
    _check_window(hu_min, hu_max)
    return (x.clip(-1.0, 1.0) + 1.0) * ((hu_max - hu_min) / 2.0) + hu_min


def percentile_normalize(
    x: np.ndarray,
    lower: float = DEFAULT_PERCENTILES[0],
    upper: float = DEFAULT_PERCENTILES[1],
    source: str = "<array>",
) -> tuple[np.ndarray, dict[str, float]]:
    """Robust MR scaling: the ``lower``/``upper`` percentiles of ``x`` map to -1/1, values beyond are clipped.

    Args:
        x: intensities of one whole volume (any shape).
        lower, upper: percentiles in [0, 100], ``lower < upper``.
        source: file name quoted in errors.

    Returns:
        ``(y, record)``: y float32 in [-1, 1]; record ``{"p_lower": value, "p_upper": value}`` in the input's
        units (store it to invert approximately later).

    Raises:
        DataError: the two percentiles coincide (a constant volume cannot be scaled).
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    p_lo, p_hi = (float(v) for v in np.percentile(x, [lower, upper]))
    if not p_hi > p_lo:
        raise DataError(f"{source}: percentiles {lower}/{upper} are equal ({p_lo}); cannot scale a constant volume")
    y = (np.clip(x, p_lo, p_hi) - p_lo) * (2.0 / (p_hi - p_lo)) - 1.0
    return y.astype(np.float32), {"p_lower": p_lo, "p_upper": p_hi}


def minmax_normalize(x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Reference per-block min-max scaling to [-1, 1]; a constant block maps to -1.

    Returns:
        ``(y, record)`` with record ``{"min": value, "max": value}`` of the input.
    """
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        y = (x - lo) * (2.0 / (hi - lo)) - 1.0
    else:
        y = np.full_like(x, -1.0)
    return y.astype(np.float32), {"min": lo, "max": hi}


def validate_intensity(intensity: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check an intensity spec and fill defaults.

    Args:
        intensity: dict with ``kind`` in :data:`INTENSITY_KINDS` and that kind's parameters, or None (= none).

    Returns:
        A new dict with every parameter present and ``invertible`` set.

    Raises:
        ValueError: unknown kind, unknown keys or invalid parameters.
    """
    spec = dict(intensity or {"kind": "none"})
    kind = spec.get("kind")
    if kind not in INTENSITY_KINDS:
        raise ValueError(f"intensity kind must be one of {INTENSITY_KINDS}, got {kind!r}")
    allowed = {"kind", "invertible"}
    if kind == "ct_window":
        allowed |= {"hu_min", "hu_max"}
        spec.setdefault("hu_min", DEFAULT_HU_WINDOW[0])
        spec.setdefault("hu_max", DEFAULT_HU_WINDOW[1])
        spec["hu_min"], spec["hu_max"] = float(spec["hu_min"]), float(spec["hu_max"])
        _check_window(spec["hu_min"], spec["hu_max"])
    elif kind == "percentile":
        allowed |= {"lower", "upper"}
        spec.setdefault("lower", DEFAULT_PERCENTILES[0])
        spec.setdefault("upper", DEFAULT_PERCENTILES[1])
        spec["lower"], spec["upper"] = float(spec["lower"]), float(spec["upper"])
        if not 0.0 <= spec["lower"] < spec["upper"] <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {spec}")
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"intensity kind {kind!r} does not take keys {sorted(unknown)}")
    expected_invertible = kind in ("ct_window", "none")
    if spec.get("invertible", expected_invertible) != expected_invertible:
        raise ValueError(f"intensity kind {kind!r} has invertible={expected_invertible}, the spec says otherwise")
    spec["invertible"] = expected_invertible
    return spec


def normalize(x: np.ndarray, intensity: Mapping[str, Any] | None, source: str = "<array>") -> tuple[np.ndarray, dict]:
    """Apply an intensity spec to one volume (or, for ``reference``, one block).

    Args:
        x: raw intensities, any shape.
        intensity: spec (see module docstring).
        source: file name quoted in errors.

    Returns:
        ``(y, record)``: y float32 in [-1, 1]; record holds what was measured on ``x`` (may be empty).

    Raises:
        DataError: ``kind: none`` but ``x`` leaves [-1, 1]; a constant volume under ``percentile``.
    """
    spec = validate_intensity(intensity)
    kind = spec["kind"]
    if kind == "ct_window":
        return ct_window(x, spec["hu_min"], spec["hu_max"]).astype(np.float32), {}
    if kind == "percentile":
        return percentile_normalize(x, spec["lower"], spec["upper"], source)
    if kind == "reference":
        return minmax_normalize(x)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - 1e-5 or hi > 1.0 + 1e-5:
        raise DataError(
            f"{source}: intensities [{lo:.4g}, {hi:.4g}] are not normalised to [-1, 1]; set an intensity spec "
            "(e.g. {kind: ct_window} or {kind: percentile}) for raw data"
        )
    return x.astype(np.float32, copy=False), {}


def invert(x: ArrayT, intensity: Mapping[str, Any] | None) -> ArrayT:
    """Map model outputs in [-1, 1] back to the data's units where the normalisation allows it.

    Args:
        x: images in [-1, 1] (numpy or torch, any shape).
        intensity: the dataset's intensity spec.

    Returns:
        HU for ``ct_window``; ``x`` unchanged for ``none``.

    Raises:
        ValueError: the spec is not invertible (``percentile``, ``reference``): outputs stay in [-1, 1].
    """
    spec = validate_intensity(intensity)
    if spec["kind"] == "ct_window":
        return invert_ct_window(x, spec["hu_min"], spec["hu_max"])
    if spec["kind"] == "none":
        return x
    raise ValueError(f"intensity kind {spec['kind']!r} is not invertible; keep outputs in [-1, 1]")


def _check_window(hu_min: float, hu_max: float) -> None:
    if not hu_min < hu_max:
        raise ValueError(f"CT window needs hu_min < hu_max, got [{hu_min}, {hu_max}]")


def invert_scan(x: ArrayT, intensity: Mapping[str, Any] | None, record: Mapping[str, float]) -> ArrayT:
    """Map [-1, 1] values back to one scan's units with the record :func:`normalize` returned for that scan.

    Unlike :func:`invert`, this also undoes the per-volume kinds (``percentile``: its two percentiles,
    ``reference``: its min and max), linearly: values the normalisation clipped are not recovered.

    Args:
        x: values in [-1, 1] (numpy or torch, any shape).
        intensity: the dataset's intensity spec.
        record: :func:`normalize`'s record for the scan.
    """
    spec = validate_intensity(intensity)
    if spec["kind"] in ("ct_window", "none"):
        return invert(x, spec)
    lo, hi = (record["p_lower"], record["p_upper"]) if spec["kind"] == "percentile" else (record["min"], record["max"])
    return (x + 1.0) * ((hi - lo) / 2.0) + lo
