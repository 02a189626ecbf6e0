"""Procedural phantoms for unit tests: nested ellipsoids of K classes with class-dependent texture.

Each sample is drawn from its own generator seeded by ``(seed, split, index)``, so samples are
deterministic, independent of access order, and the splits never share a sample. Everything is generated in
memory at construction (16^3 volumes take microseconds); nothing touches the disk.

Construction of one sample (all sizes in voxels of the (D, H, W) grid):
1. class 1 is an axis-aligned ellipsoid with a random centre near the middle and radii 30-42 % of the size;
2. class k > 1 is an ellipsoid whose radii are (K - k) / (K - 1) of class 1's (times 0.85-1.0) and whose centre
   is jittered; it is painted only where class k - 1 is, so the classes nest;
3. intensity = class mean (evenly spaced in [-0.6, 0.6], background about -0.95) + a class-specific plane
   wave (amplitude 0.15, frequency rising with the class id) + uniform noise of +-0.05; by construction
   every value lies in [-1, 1], nothing is clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from dataset.contract import Sample, validate_sample
from dataset.nifti import make_sample
from dataset.splits import SPLITS, check_split

TEXTURE_AMPLITUDE = 0.15
NOISE_AMPLITUDE = 0.05


def phantom_affine(size: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """Affine of a phantom's (I, J, K) = (H, W, D) array: voxel sizes on the diagonal, centred at the origin."""
    d, h, w = size
    vd, vh, vw = voxel_size
    affine = np.diag([vh, vw, vd, 1.0])
    affine[:3, 3] = -0.5 * np.array([(h - 1) * vh, (w - 1) * vw, (d - 1) * vd])
    return affine


def make_phantom(rng: np.random.Generator, size: Sequence[int], label_nc: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom.

    Args:
        rng: generator (the only source of randomness).
        size: (D, H, W).
        label_nc: K, background included.

    Returns:
        ``(image, label)``: (D, H, W) float32 in [-1, 1] and (D, H, W) int64 in [0, K).
    """
    shape = np.array(size, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size], indexing="ij"))  # (3, D, H, W)
    label = np.zeros(tuple(size), dtype=np.int64)
    centre = shape / 2.0 - 0.5 + rng.uniform(-0.08, 0.08, 3) * shape
    outer = rng.uniform(0.30, 0.42, 3) * shape
    for k in range(1, label_nc):
        radii = outer * (label_nc - k) / (label_nc - 1) * (1.0 if k == 1 else rng.uniform(0.85, 1.0))
        if k > 1:
            centre = centre + rng.uniform(-0.15, 0.15, 3) * radii
        inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0
        label[inside & (label == k - 1)] = k

    means = np.full(label_nc, -0.95)
    means[1:] = np.linspace(-0.6, 0.6, label_nc - 1) if label_nc > 2 else 0.0
    image = means[label]
    for k in range(1, label_nc):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        freq = 0.08 + 0.06 * k  # cycles per voxel: finer texture for higher classes
        wave = np.sin(2 * np.pi * freq * np.tensordot(direction, grid, axes=1) + rng.uniform(0, 2 * np.pi))
        image = np.where(label == k, image + TEXTURE_AMPLITUDE * wave, image)
    image = image + rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, tuple(size))
    return image.astype(np.float32), label


class SyntheticPhantomDataset(Dataset):
    """In-memory nested-ellipsoid phantoms (see module docstring).

    Args:
        split: ``train``, ``val`` or ``test``.
        num_samples: samples in this split.
        size: (D, H, W).
        label_nc: K classes, background included; large K at small sizes can leave inner classes empty.
        seed: base seed.
        voxel_size: (D, H, W) voxel size in mm written into the affine.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 8,
        size: Sequence[int] = (16, 16, 16),
        label_nc: int = 4,
        seed: int = 0,
        voxel_size: Sequence[float] = (2.0, 1.5, 1.5),
    ) -> None:
        super().__init__()
        self.split = check_split(split)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if len(size) != 3 or any(int(s) < 4 for s in size):
            raise ValueError(f"size must be three ints >= 4 (D, H, W), got {size}")
        if label_nc < 2:
            raise ValueError(f"label_nc must be >= 2, got {label_nc}")
        if len(voxel_size) != 3 or any(float(v) <= 0 for v in voxel_size):
            raise ValueError(f"voxel_size must be three positive floats, got {voxel_size}")
        self.size = tuple(int(s) for s in size)
        self.label_nc = int(label_nc)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.affine = phantom_affine(self.size, [float(v) for v in voxel_size])
        split_index = SPLITS.index(split)
        self._volumes = []
        for i in range(self.num_samples):
            rng = np.random.default_rng([self.seed, split_index, i])
            self._volumes.append(make_phantom(rng, self.size, self.label_nc))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: image (1, D, H, W) float32 in [-1, 1], label (1, D, H, W) int64, affine, id."""
        image, label = self._volumes[index]
        sample = make_sample(image, label, self.affine, f"phantom_{self.split}_{index:04d}")
        validate_sample(sample, self.label_nc)
        return sample
