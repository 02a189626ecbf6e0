"""Feature statistics and the Fréchet distance, the one implementation behind FID and 3D-FID.

FD(N(mu1, S1), N(mu2, S2)) = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Dowson & Landau 1982;
Heusel et al. 2017). Computed in float64 with ``scipy.linalg.sqrtm``; when the product is singular enough
for sqrtm to return non-finite values, ``eps`` is added to both diagonals and the root retried (the
pytorch-fid / MONAI convention); a small imaginary part from round-off is dropped, a large one is an error.
Covariances are unbiased (divide by n - 1), as in pytorch-fid (``np.cov``) and MONAI's ``FIDMetric``.
When both sets have no more vectors than dimensions, :func:`fid_from_stats` evaluates the same formula
exactly from the vectors (nuclear norm of the cross-covariance factor) instead of an F x F ``sqrtm``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import linalg

logger = logging.getLogger(__name__)

SQRTM_EPS = 1e-6
IMAG_ATOL = 1e-3


class FeatureStats:
    """Streaming mean and covariance of feature vectors, accumulated in float64.

    Sums are taken around a fixed shift (the first batch's mean) so the one-pass covariance does not lose
    precision to cancellation when features have a large common offset. The raw vectors are also kept while
    there are at most ``dim`` of them, for the exact low-rank Fréchet path (see :func:`fid_from_stats`).

    Args:
        dim: feature dimension F.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"feature dimension must be >= 1, got {dim}")
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)
        self._rows: list[np.ndarray] | None = []

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        """Add a batch of feature vectors, shape (N, F)."""
        arr = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, float)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("features hold NaN or Inf (the feature network diverged on this input)")
        if arr.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = arr.mean(axis=0)
        centred = arr - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.n += arr.shape[0]
        if self._rows is not None:
            self._rows.append(arr)
            if self.n > self.dim:
                self._rows = None  # full-rank regime: the sqrtm path is used, the rows are not needed

    def mean(self) -> np.ndarray:
        """(F,) float64 mean; ValueError when empty."""
        if self.n == 0 or self._shift is None:
            raise ValueError("no features accumulated")
        return self._shift + self._sum / self.n

    def cov(self) -> np.ndarray:
        """(F, F) float64 unbiased covariance; ValueError with fewer than 2 vectors."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        centred_mean = self._sum / self.n
        return (self._outer - self.n * np.outer(centred_mean, centred_mean)) / (self.n - 1)

    def rows(self) -> np.ndarray | None:
        """(N, F) float64 of the vectors while N <= F, else None."""
        if self._rows is None:
            return None
        return np.concatenate(self._rows, axis=0) if self._rows else np.zeros((0, self.dim))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = SQRTM_EPS
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (F,) means.
        sigma1, sigma2: (F, F) covariances.
        eps: diagonal offset used only when the first sqrtm is not finite.

    Returns:
        The squared Fréchet distance (may be a hair below 0 from round-off for identical statistics).

    Raises:
        ValueError: shape mismatch, or an imaginary part of the root above 1e-3 (not round-off).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _frechet_from_rows(x1: np.ndarray, x2: np.ndarray) -> float:
    """Exact Fréchet distance of the Gaussians fitted to two sample sets, without an F x F matrix root.

    With S1 = A A^T, S2 = B B^T (A = centred X1^T / sqrt(n1 - 1), likewise B), the eigenvalues of S1 S2 are
    the squared singular values of A^T B (n1 x n2), so Tr (S1 S2)^(1/2) is the nuclear norm of A^T B.
    Symmetric and real by construction: no eps offset, no imaginary part.
    """
    a = (x1 - x1.mean(0)) / np.sqrt(x1.shape[0] - 1)
    b = (x2 - x2.mean(0)) / np.sqrt(x2.shape[0] - 1)
    diff = x1.mean(0) - x2.mean(0)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * nuclear)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> tuple[float, str]:
    """Fréchet distance between the Gaussians fitted to two feature sets.

    When both sets hold at most F vectors (the usual 3D-FID case: covariances of rank < F), the trace of the
    matrix root is computed exactly from the vectors (:func:`_frechet_from_rows`): the same value as
    :func:`frechet_distance`, without an F x F ``sqrtm`` (minutes on a CPU for F = 2048, and inaccurate on
    singular products). Otherwise :func:`frechet_distance` on the means and covariances.

    Returns:
        (distance, method used: "sqrtm" or "nuclear-norm").
    """
    if real.dim != fake.dim:
        raise ValueError(f"feature dimensions differ: {real.dim} vs {fake.dim}")
    for stats in (real, fake):
        if stats.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {stats.n}")
    rows_real, rows_fake = real.rows(), fake.rows()
    if rows_real is not None and rows_fake is not None and max(real.n, fake.n) <= real.dim:
        return _frechet_from_rows(rows_real, rows_fake), "nuclear-norm"
    return frechet_distance(real.mean(), real.cov(), fake.mean(), fake.cov()), "sqrtm"


def rank_warning(name: str, n_real: int, n_fake: int, dim: int) -> str | None:
    """Warning text when either set has fewer vectors than feature dimensions (rank-deficient covariance)."""
    if min(n_real, n_fake) >= dim:
        return None
    return (
        f"{name}: {min(n_real, n_fake)} feature vectors < feature dimension {dim}: the covariance is "
        f"rank-deficient, so the value is biased and not comparable with runs that use other sample counts"
    )
