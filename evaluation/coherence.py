"""Anatomical coherence of label maps: is a generated map one whole anatomy, placed as the real ones are?

Volume and topology statistics per class (``evaluation.label_metrics``) do not see a map whose anatomy is wrapped
or stacked (two half-brains along depth) or split into two large bodies. These measures do, each per map:

- **bodies**: foreground connected components (26-connectivity), the number of *large* ones (at least
  ``CoherenceRules.large_body`` of the foreground) and the share of the foreground in the largest;
- **profile runs**: along each axis, the foreground area of every slice; the number of separate runs of slices
  whose area is above half the maximum (a real anatomy rises once and falls once: one run);
- **centroids**: the foreground centroid and each class's centroid, as fractions of the volume's extent;
- **containment**: the share of class ``a``'s voxels inside the filled hull of class ``b``
  (``scipy.ndimage.binary_fill_holes``); a pair that is contained in every real map (e.g. white matter inside
  grey matter) is a rule that generated maps should keep.

A map is *incoherent* when it breaks one of these against every real map: more large bodies or profile runs than
any real map, a smaller largest-body share than any real map (less a tolerance), a centroid outside the real
maps' range (plus a margin), or a containment rule broken.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class CoherenceRules:
    """Thresholds of the incoherence test (fractions: of the foreground, of the extent, of a class's voxels)."""

    large_body: float = 0.05  # a component holding at least this share of the foreground counts as a body
    share_tolerance: float = 0.05  # largest-body share may fall this far below the smallest real one
    centroid_margin: float = 0.1  # centroids may lie this far (fraction of the extent) outside the real range
    contained: float = 0.95  # a pair is a containment rule when every real map has at least this share inside
    broken: float = 0.8  # a generated map breaks the rule below this share


@dataclass(frozen=True)
class Coherence:
    """The coherence measures of one (D, H, W) label map with ``K`` classes (0 = background)."""

    components: int  # foreground connected components, specks included
    large_bodies: int  # components holding at least CoherenceRules.large_body of the foreground
    largest_share: float  # share of the foreground in the largest component (0 for an empty map)
    runs: tuple[int, int, int]  # per axis (D, H, W): runs of slices with area above half the maximum
    centroid: np.ndarray  # (3,) foreground centroid as a fraction of the extent per axis (nan when empty)
    class_centroids: np.ndarray  # (K - 1, 3) each foreground class's centroid, fraction (nan when absent)
    inside: np.ndarray  # (K - 1, K - 1) share of class a's voxels inside the filled hull of class b (nan: absent)


def profile_runs(area: np.ndarray) -> int:
    """Number of maximal runs of consecutive entries of a 1-D ``area`` profile above half its maximum."""
    if area.size == 0 or area.max() <= 0:
        return 0
    above = (area > 0.5 * area.max()).astype(np.int8)
    return int(above[0] + np.count_nonzero(np.diff(above) == 1))


def _fractions(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates (..., 3) -> fractions of the extent: voxel centres at (i + 0.5) / n."""
    return (coords + 0.5) / np.asarray(shape, dtype=np.float64)


def measure(label: np.ndarray, num_classes: int, rules: CoherenceRules | None = None) -> Coherence:
    """The coherence measures of one integer (D, H, W) ``label`` map with ``num_classes`` classes."""
    rules = rules or CoherenceRules()
    fg = label > 0
    total = int(fg.sum())
    comp, n_comp = ndimage.label(fg, structure=_STRUCTURE_26)
    sizes = np.bincount(comp.ravel(), minlength=n_comp + 1)[1:]
    largest = float(sizes.max() / total) if total else 0.0
    large = int(np.count_nonzero(sizes >= rules.large_body * total)) if total else 0
    runs = tuple(profile_runs(fg.sum(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3))
    centroid = _fractions(np.argwhere(fg).mean(axis=0), label.shape) if total else np.full(3, np.nan)
    k = num_classes - 1
    class_centroids = np.full((k, 3), np.nan)
    counts = np.bincount(label.ravel(), minlength=num_classes)[1:num_classes]
    if k:
        # one pass: per class the sum of each coordinate, then divide by the class size
        flat = label.ravel()
        grid = np.indices(label.shape).reshape(3, -1)
        for ax in range(3):
            sums = np.bincount(flat, weights=grid[ax], minlength=num_classes)[1:num_classes]
            with np.errstate(invalid="ignore", divide="ignore"):
                class_centroids[:, ax] = _fractions(sums / counts, [label.shape[ax]])
    inside = np.full((k, k), np.nan)
    for b in range(1, num_classes):
        if counts[b - 1] == 0:
            continue
        hull = ndimage.binary_fill_holes(label == b)
        within = np.bincount(label[hull], minlength=num_classes)[1:num_classes]
        with np.errstate(invalid="ignore", divide="ignore"):
            inside[:, b - 1] = np.where(counts > 0, within / np.maximum(counts, 1), np.nan)
    np.fill_diagonal(inside, np.nan)
    return Coherence(n_comp, large, largest, runs, centroid, class_centroids, inside)  # type: ignore[arg-type]


def containment_rules(real: Sequence[Coherence], rules: CoherenceRules | None = None) -> list[tuple[int, int]]:
    """Pairs ``(a, b)`` of foreground class indices (1-based) with class a inside class b in every real map."""
    rules = rules or CoherenceRules()
    if not real:
        return []
    stack = np.stack([c.inside for c in real])  # (N, K-1, K-1); nan where a class is absent
    kept = np.all(np.nan_to_num(stack, nan=-1.0) >= rules.contained, axis=0)
    return [(int(a) + 1, int(b) + 1) for a, b in zip(*np.nonzero(kept))]


def breaks(
    fake: Coherence,
    real: Sequence[Coherence],
    class_names: Sequence[str],
    rules: CoherenceRules | None = None,
    contained: Sequence[tuple[int, int]] | None = None,
) -> list[str]:
    """What ``fake`` breaks against every map in ``real``: one short reason each (empty: coherent).

    ``class_names``: K names, background first. ``contained``: the containment rules of ``real`` (computed here
    when not given).
    """
    rules = rules or CoherenceRules()
    if not real:
        raise ValueError("the coherence test needs at least one real label map")
    reasons = []
    max_bodies = max(c.large_bodies for c in real)
    if fake.large_bodies > max_bodies:
        reasons.append(f"{fake.large_bodies} large bodies (real: at most {max_bodies})")
    min_share = min(c.largest_share for c in real)
    if fake.largest_share < min_share - rules.share_tolerance:
        reasons.append(f"largest body {fake.largest_share:.2f} of the foreground (real: at least {min_share:.2f})")
    for ax, axis in enumerate("DHW"):
        most = max(c.runs[ax] for c in real)
        if fake.runs[ax] > most:
            reasons.append(f"{fake.runs[ax]} area runs along {axis} (real: at most {most})")
    real_centroids = np.stack([c.centroid for c in real])
    lo, hi = np.nanmin(real_centroids, axis=0), np.nanmax(real_centroids, axis=0)
    off = (fake.centroid < lo - rules.centroid_margin) | (fake.centroid > hi + rules.centroid_margin)
    if np.any(off):
        reasons.append("foreground centroid outside the real range along " + "".join(np.array(list("DHW"))[off]))
    real_class = np.stack([c.class_centroids for c in real])  # (N, K-1, 3)
    with warnings.catch_warnings():
        # a class absent from every real map has no range ("All-NaN slice"): by design, not judged
        warnings.simplefilter("ignore", RuntimeWarning)
        clo, chi = np.nanmin(real_class, axis=0), np.nanmax(real_class, axis=0)
    # a class absent from the fake map (nan) or from every real map (nan range) compares False: not judged
    margin = rules.centroid_margin
    off_class = (fake.class_centroids < clo - margin) | (fake.class_centroids > chi + margin)
    for c in np.nonzero(off_class.any(axis=1))[0]:
        reasons.append(f"centroid of {class_names[c + 1]} outside the real range")
    for a, b in contained if contained is not None else containment_rules(real, rules):
        share = fake.inside[a - 1, b - 1]
        if not np.isnan(share) and share < rules.broken:
            reasons.append(f"{class_names[a]} only {share:.2f} inside {class_names[b]} (real: always inside)")
    return reasons


def summary(
    fake: Sequence[tuple[str, np.ndarray]],
    real: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    rules: CoherenceRules | None = None,
) -> dict:
    """The coherence report of generated maps against real ones, as plain data.

    ``fake``, ``real``: (id, integer (D, H, W) label map) pairs. Each real map is also judged against the other real
    maps (leave one out): the rate a real anatomy is flagged at, for reading the generated maps' rate.
    """
    rules = rules or CoherenceRules()
    k = len(class_names)
    mf = [(i, measure(m, k, rules)) for i, m in fake]
    mr = [(i, measure(m, k, rules)) for i, m in real]
    real_measures = [c for _, c in mr]
    contained = containment_rules(real_measures, rules)
    per_map = {i: breaks(c, real_measures, class_names, rules, contained) for i, c in mf}
    loo = {}
    if len(mr) > 1:
        for j, (i, c) in enumerate(mr):
            others = real_measures[:j] + real_measures[j + 1 :]
            loo[i] = breaks(c, others, class_names, rules)
    flagged = sorted(i for i, r in per_map.items() if r)

    def table(ms: list[tuple[str, Coherence]]) -> dict:
        return {
            "large_bodies_max": max((c.large_bodies for _, c in ms), default=0),
            "largest_share_min": min((c.largest_share for _, c in ms), default=0.0),
            "runs_max": [max((c.runs[ax] for _, c in ms), default=0) for ax in range(3)],
        }

    return {
        "rules": rules.__dict__,
        "containment_rules": [f"{class_names[a]} inside {class_names[b]}" for a, b in contained],
        "fake": table(mf),
        "real": table(mr),
        "incoherent": flagged,
        "incoherent_share": len(flagged) / len(mf) if mf else 0.0,
        "real_leave_one_out_share": (sum(1 for r in loo.values() if r) / len(loo)) if loo else None,
        "per_map": per_map,
        "real_leave_one_out": loo,
    }
