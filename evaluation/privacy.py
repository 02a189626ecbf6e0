"""Privacy audit: does any synthetic volume look like a copy of a training volume?

For every synthetic volume: its nearest training volume by 3D SSIM (highest) and by feature distance
(lowest Euclidean distance between feature vectors). Features come from the 3D-FID extractor (MedicalNet
ResNet-50) when its weights are available, otherwise from a cheap fallback (the volume average-pooled to 8³,
a 512-d vector); the report records which.

Copy thresholds are calibrated on the training set itself: a synthetic volume is a *suspected copy* when its
nearest-neighbour SSIM is at least the highest SSIM between two distinct training volumes, or its
nearest-neighbour feature distance is at most the smallest distance between two distinct training volumes
(i.e. it is closer to a training volume than any two patients are to each other). A voxel-wise identical
volume (max |difference| <= 1e-6 on the [0, 1] scale) is always flagged as an exact copy. The SSIM threshold
is taken over all training pairs, or over a seeded random subset of ``max_reference_pairs`` pairs when there
are more (a lower maximum, so more flags: the conservative side).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset import DataError
from dataset.nifti import load_image
from evaluation.image_metrics import ssim3d
from evaluation.intensity import IntensityRange

logger = logging.getLogger(__name__)

EXACT_ATOL = 1e-6
AVGPOOL_GRID = 8
PERCENTILES = {"min": 0, "p5": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "max": 100}

FeatureFn = Callable[[torch.Tensor], np.ndarray]


def avgpool_features(volume: torch.Tensor) -> np.ndarray:
    """Fallback feature: a (D, H, W) volume average-pooled to 8x8x8, flattened to (512,)."""
    pooled = F.adaptive_avg_pool3d(volume[None, None].double(), AVGPOOL_GRID)
    return pooled.flatten().numpy()


def _distribution(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {name: float(np.percentile(arr, q)) for name, q in PERCENTILES.items()} | {"n": int(arr.size)}


def _reference_pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    pairs = list(itertools.combinations(range(n), 2))
    if len(pairs) <= max_pairs:
        return pairs
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in sorted(rng.choice(len(pairs), size=max_pairs, replace=False))]


def privacy_audit(
    fake_paths: list[Path],
    train_paths: list[Path],
    fake_range: IntensityRange,
    train_range: IntensityRange,
    feature_fn: FeatureFn,
    feature_name: str,
    fake_features: dict[Path, np.ndarray] | None = None,
    max_reference_pairs: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Nearest training volume of each synthetic volume, distributions and suspected copies.

    Args:
        fake_paths: synthetic NIfTI volumes.
        train_paths: real training NIfTI volumes (at least 1; 2 or more to calibrate thresholds).
        fake_range, train_range: how each set maps to [0, 1].
        feature_fn: (D, H, W) volume in [0, 1] → 1-D feature vector.
        feature_name: recorded in the report.
        fake_features: features already computed for some synthetic files (reused, e.g. from 3D-FID).
        max_reference_pairs: cap on training pairs used for the SSIM threshold.
        seed: seed of the subset of reference pairs.
        progress: show progress bars.

    Returns:
        JSON-ready dict (per-volume nearest neighbours, summary, thresholds, suspected copies).

    Raises:
        ValueError: no training volume, or ``max_reference_pairs`` < 1.
        DataError: volumes of different shapes (voxel-wise SSIM needs one grid).
    """
    if not train_paths:
        raise ValueError("privacy audit needs at least one training volume")
    if max_reference_pairs < 1:
        raise ValueError(f"max_reference_pairs must be >= 1, got {max_reference_pairs}")
    fake_features = fake_features or {}
    train: list[torch.Tensor] = []
    for path in tqdm(train_paths, desc="privacy: training set", disable=None if progress else True):
        data, _ = load_image(path)
        vol = torch.from_numpy(train_range.to_unit(data, str(path)))
        if train and vol.shape != train[0].shape:
            raise DataError(
                f"{path}: shape {tuple(vol.shape)} differs from {tuple(train[0].shape)} of {train_paths[0]}"
            )
        train.append(vol)
    train_feats = np.stack([feature_fn(v) for v in train])

    # Thresholds from distinct training pairs.
    ref_pairs = _reference_pairs(len(train), max_reference_pairs, seed)
    ssim_thr = max((ssim3d(train[i], train[j])[0] for i, j in ref_pairs), default=None)
    if len(train) > 1:
        dists = np.linalg.norm(train_feats[:, None] - train_feats[None], axis=-1)
        dist_thr = float(dists[np.triu_indices(len(train), 1)].min())
    else:
        dist_thr = None

    per_volume, flagged = [], []
    for path in tqdm(fake_paths, desc="privacy: synthetic set", disable=None if progress else True):
        data, _ = load_image(path)
        vol = torch.from_numpy(fake_range.to_unit(data, str(path)))
        if vol.shape != train[0].shape:
            raise DataError(
                f"{path}: shape {tuple(vol.shape)} differs from the training volumes' {tuple(train[0].shape)}"
            )
        ssims = [ssim3d(vol, t)[0] for t in train]
        feat = fake_features[path] if path in fake_features else feature_fn(vol)
        dist = np.linalg.norm(train_feats - feat[None], axis=-1)
        i_ssim, i_feat = int(np.argmax(ssims)), int(np.argmin(dist))
        exact = bool(torch.max(torch.abs(vol - train[i_ssim])) <= EXACT_ATOL)
        entry = {
            "fake": path.name,
            "nearest_train_ssim": train_paths[i_ssim].name,
            "nn_ssim": ssims[i_ssim],
            "nearest_train_feature": train_paths[i_feat].name,
            "nn_feature_distance": float(dist[i_feat]),
            "exact_copy": exact,
        }
        reasons = ["exact copy"] if exact else []
        if ssim_thr is not None and entry["nn_ssim"] >= ssim_thr:
            reasons.append(f"NN SSIM >= max SSIM between training volumes ({ssim_thr:.4f})")
        if dist_thr is not None and entry["nn_feature_distance"] <= dist_thr:
            reasons.append(f"NN feature distance <= min distance between training volumes ({dist_thr:.4g})")
        per_volume.append(entry)
        if reasons:
            flagged.append(entry | {"reasons": reasons})
    if flagged:
        logger.warning("privacy audit: %d of %d synthetic volumes look like copies", len(flagged), len(per_volume))
    return {
        "features": feature_name,
        "n_train": len(train),
        "n_fake": len(per_volume),
        "rule": (
            "suspected copy when NN SSIM >= the highest SSIM between distinct training volumes, or NN feature "
            "distance <= the smallest distance between distinct training volumes, or voxel-wise identical "
            f"(max |diff| <= {EXACT_ATOL:g} on [0, 1])"
        ),
        "thresholds": {
            "nn_ssim": {"value": ssim_thr, "reference_pairs": len(ref_pairs), "ssim": "3D, window 11 (see ssim)"},
            "nn_feature_distance": {"value": dist_thr, "reference_pairs": len(train) * (len(train) - 1) // 2},
        },
        "summary": {
            "nn_ssim": _distribution([e["nn_ssim"] for e in per_volume]),
            "nn_feature_distance": _distribution([e["nn_feature_distance"] for e in per_volume]),
        },
        "suspected_copies": flagged,
        "per_volume": per_volume,
    }


def uses_medicalnet(features: str, random_weights: bool, weights_dir: Path | None) -> bool:
    """Whether the audit uses MedicalNet features: ``features`` ``medicalnet``, or ``auto`` with its weights there.

    ``auto`` without the weights falls back to :func:`avgpool_features` with a warning naming the fetch command.
    """
    from evaluation import weights as W

    if features == "avgpool":
        return False
    if features == "medicalnet" or random_weights:
        return True
    try:
        W.resolve(W.MEDICALNET50, weights_dir)
    except W.MissingWeightsError:
        logger.warning(
            "privacy audit: MedicalNet weights not found; using the avg-pool fallback features (`%s` fetches them)",
            W.fetch_command(W.MEDICALNET50, weights_dir),
        )
        return False
    return True


def audit_folders(
    fake_files: list[Path],
    train_files: list[Path],
    fake_range: IntensityRange,
    train_range: IntensityRange,
    *,
    medicalnet: torch.nn.Module | None,
    fid3d_convention: str,
    random_weights: bool,
    fake_features: dict[Path, np.ndarray] | None,
    max_reference_pairs: int,
    progress: bool,
) -> dict:
    """:func:`privacy_audit` with MedicalNet features (``medicalnet`` given) or the avg-pool fallback.

    ``fake_features``: the synthetic volumes' MedicalNet features already computed for 3D-FID (reused, not
    recomputed); only with ``medicalnet``.
    """
    if medicalnet is not None:
        from evaluation.medicalnet import volume_features

        def feature_fn(vol: torch.Tensor) -> np.ndarray:
            return volume_features(medicalnet, vol, fid3d_convention)[0].double().numpy()

        name = f"medicalnet_resnet50 global-pooled (2048-d), {fid3d_convention} input convention" + (
            " RANDOM WEIGHTS" if random_weights else ""
        )
        reuse = fake_features
    else:
        feature_fn, name, reuse = avgpool_features, "avgpool 8x8x8 fallback (512-d)", None
    audit = privacy_audit(
        fake_files,
        train_files,
        fake_range=fake_range,
        train_range=train_range,
        feature_fn=feature_fn,
        feature_name=name,
        fake_features=reuse,
        max_reference_pairs=max_reference_pairs,
        progress=progress,
    )
    audit["intensity_train"] = train_range.describe()
    return audit
