"""What every benchmark section shares: constants, value parsers, statistics and the training data."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SCHEMA = "med-lsdm-benchmark/3"
PAPER_BLOCK = (32, 256, 256)  # image block of the paper; latent 8x8x64x64 with the [4, 4, 4] VQ-GAN
DEFAULT_SIZES = ((16, 16, 16), (32, 32, 32), (32, 64, 64), (32, 128, 128), PAPER_BLOCK)
QUICK_SIZES = ((16, 16, 16),)
DEFAULT_SAMPLERS = ("ddpm", "ddim:25", "ddim:50", "ddim:100", "rflow:30")
GEN_MULTIPLES = ((1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 4, 4), (4, 4, 4))
QUICK_GEN_MULTIPLES = GEN_MULTIPLES[:4]
# a fast path gives "the same result" as fp32 when the relative L2 error of the network outputs (training) / the mean
# absolute voxel difference of the generated volume in [-1, 1] (generation) stays within these
OUTPUT_RTOL = {"bf16-mixed": 5e-2, "16-mixed": 1e-2, "compile": 1e-4}
IMAGE_ATOL = {"bf16": 5e-2, "16": 2e-2, "compile": 1e-3}


@dataclass(frozen=True)
class ModelSpec:
    """A model to train: its stage, its config (``config/model/<config>.yaml``) and, for stage 2, the VQ-GAN config
    of its (untrained) first stage."""

    stage: str
    config: str
    first_stage: str | None = None


MODELS: dict[str, ModelSpec] = {
    "vqgan_normal_tiny": ModelSpec("vqgan", "vq_gan_3d_tiny"),
    "vqgan_spade_tiny": ModelSpec("vqgan", "vq_gan_spade_tiny"),
    "diffusion_tiny": ModelSpec("diffusion", "diffusion_tiny", "vq_gan_3d_tiny"),
    "vqgan_normal": ModelSpec("vqgan", "vq_gan_3d"),
    "vqgan_spade": ModelSpec("vqgan", "vq_gan_spade"),
    "diffusion": ModelSpec("diffusion", "diffusion", "vq_gan_3d"),
}
GEN_BLOCKS = {"diffusion_tiny": (32, 32, 32), "diffusion": PAPER_BLOCK}


def parse_size(text: str) -> tuple[int, int, int]:
    """``"32"`` → (32, 32, 32); ``"32x256x256"`` → (32, 256, 256)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or DxHxW with positive ints, got {text!r}") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or DxHxW with positive ints, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def size_str(size: Sequence[int]) -> str:
    """(32, 64, 64) → ``"32x64x64"``."""
    return "x".join(str(int(s)) for s in size)


def parse_sampler(text: str) -> tuple[str, int | None]:
    """``"ddpm"`` → ("ddpm", None) (all T steps); ``"ddim:50"`` → ("ddim", 50)."""
    name, _, steps = text.partition(":")
    if name not in ("ddpm", "ddim", "rflow") or (steps and (not steps.isdigit() or int(steps) < 1)):
        raise argparse.ArgumentTypeError(f"sampler must be ddpm, ddim:N or rflow:N, got {text!r}")
    if name == "ddpm" and steps:
        raise argparse.ArgumentTypeError("ddpm always runs all T steps: write 'ddpm'")
    return name, int(steps) if steps else None


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median (the reported number), min, max and count."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log y = k log x + log c``: the exponent k of y ~ c x^k.

    Returns:
        ``{"exponent": k, "coefficient": c, "r2": R^2 in log space, "points": n}``.

    Raises:
        ValueError: fewer than two points, non-positive values or a single distinct x.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need at least two (x, y) pairs, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("x and y must be positive for a log-log fit")
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if np.ptp(lx) == 0:
        raise ValueError("x has a single distinct value")
    k, logc = np.polyfit(lx, ly, 1)
    resid = ly - (k * lx + logc)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": float(k), "coefficient": float(math.exp(logc)), "r2": r2, "points": len(x)}


def json_safe(value: Any) -> Any:
    """NaN/inf → None (JSON has neither), tuples → lists, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def error_reason(err: BaseException, limit: int = 500) -> str:
    """``"TypeName: message"``, cut to ``limit`` characters (what a failed row records)."""
    return f"{type(err).__name__}: {err}"[:limit]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| in float64 (a is the reference)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


class RandomVolumes(torch.utils.data.Dataset):
    """Seeded random batches in the data contract: image (1, D, H, W) in [-1, 1] and a blocky K-class label
    (1, D, H, W) int64 (the cost of a step does not depend on the content)."""

    def __init__(self, n: int, size: Sequence[int], label_nc: int, seed: int = 0) -> None:
        self.n, self.size, self.label_nc, self.seed = n, tuple(size), label_nc, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + i)
        coarse = torch.randint(0, self.label_nc, tuple(max(s // 4, 1) for s in self.size), generator=g)
        label = torch.nn.functional.interpolate(coarse[None, None].float(), size=self.size, mode="nearest").long()[0]
        image = (label.float() / max(self.label_nc - 1, 1)) * 1.6 - 0.8 + 0.1 * torch.randn(1, *self.size, generator=g)
        return {"image": image.clamp(-1, 1), "label": label}


class LabelFileVolumes(torch.utils.data.Dataset):
    """Batches built on real label maps (NIfTI files, taken in turn), with an image derived from each as in
    :class:`RandomVolumes`. For the SPADE lookup, whose work grows with the number of distinct label
    neighbourhoods, the content of the label map does change the cost: anatomy is the case that decides it."""

    def __init__(self, n: int, files: Sequence[str], label_nc: int, seed: int = 0) -> None:
        from dataset.nifti import load_label

        if not files:
            raise ValueError("no label files")
        self.n, self.label_nc, self.seed = n, label_nc, seed
        self.labels = [torch.from_numpy(load_label(f, label_nc)[0]).long()[None] for f in files]
        if len({tuple(t.shape) for t in self.labels}) != 1:
            raise ValueError(f"label files of different shapes: {sorted({tuple(t.shape) for t in self.labels})}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = self.labels[i % len(self.labels)]
        g = torch.Generator().manual_seed(self.seed + i)
        image = (label.float() / max(self.label_nc - 1, 1)) * 1.6 - 0.8 + 0.1 * torch.randn(label.shape, generator=g)
        return {"image": image.clamp(-1, 1), "label": label}


def training_volumes(
    n: int, size: Sequence[int], label_nc: int, seed: int = 0, label_files: Sequence[str] | None = None
) -> torch.utils.data.Dataset:
    """:class:`LabelFileVolumes` on ``label_files`` when given (their shape must be ``size``), else
    :class:`RandomVolumes`."""
    if not label_files:
        return RandomVolumes(n, size, label_nc, seed)
    data = LabelFileVolumes(n, label_files, label_nc, seed)
    if tuple(data.labels[0].shape[1:]) != tuple(size):
        raise ValueError(f"label files are {tuple(data.labels[0].shape[1:])}, the benchmark size is {tuple(size)}")
    return data


def random_label(size: Sequence[int], label_nc: int, seed: int = 0) -> np.ndarray:
    """A blocky (D, H, W) int64 label map (content does not change the cost)."""
    return RandomVolumes(1, size, label_nc, seed)[0]["label"][0].numpy()
