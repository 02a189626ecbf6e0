"""Seeded spatial augmentation of integer label maps for the label generator's training (README, issue 25).

With a few training maps (the embedded datasets have 16) the label autoencoder and the label diffusion learn those
maps: generated maps sit closer to their nearest training map than real unseen maps do. Deforming every training
map anew at every step (a small random affine and a smooth elastic displacement, resampled with nearest neighbour
so every voxel keeps a class of the table) shows the generator a continuum of anatomies around each map instead.
The label stages compute their conditioning attributes (class volumes, centroids) from the *augmented* map, so the
control stays exact.

The transform, in millimetres (so it means the same at any voxel size): output voxel ``x`` (centred grid
coordinates) reads the input at ``R·S·x + t + u(x)``, with ``R`` a rotation by angles uniform in
``±degrees`` about each axis, ``S`` per-axis scales uniform in ``1 ± scales``, ``t`` uniform in
``±translation_mm`` per axis and ``u`` a displacement drawn uniform in ``±elastic_max_displacement_mm`` on a coarse
``elastic_control_points``³ grid and interpolated trilinearly. Voxels read from outside the block are background
(class 0). Each map is augmented with probability ``p`` and left exactly as it is otherwise.

Determinism: the random draws come from a generator seeded by ``(seed, step, rank)`` (:func:`step_generator`), so
a run's augmentation depends on nothing but its seed and the step, and a resumed run draws the same deformations
as an uninterrupted one without storing any RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LabelAugment:
    """Ranges of the label-map augmentation (module docstring); a model's ``label_augment`` config. The defaults
    are the ranges :mod:`dataset.mni152` makes its subjects with.

    Args:
        p: probability that a map is augmented (otherwise it is passed through unchanged).
        degrees: rotation range about each axis, degrees.
        scales: per-axis scale range around 1.
        translation_mm: translation range per axis, mm.
        elastic_control_points: control points per axis of the elastic displacement (>= 2).
        elastic_max_displacement_mm: range of each control point's displacement per axis, mm.
        seed: base seed of the draws (configs pass the run's ``${seed}``).
    """

    p: float = 1.0
    degrees: float = 8.0
    scales: float = 0.08
    translation_mm: float = 4.0
    elastic_control_points: int = 7
    elastic_max_displacement_mm: float = 7.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"label_augment.p must be in [0, 1], got {self.p}")
        if min(self.degrees, self.scales, self.translation_mm, self.elastic_max_displacement_mm) < 0:
            raise ValueError("label_augment ranges (degrees, scales, translation_mm, elastic_...) must be >= 0")
        if self.scales >= 1.0:
            raise ValueError(f"label_augment.scales must be below 1, got {self.scales}")
        if self.elastic_control_points < 2:
            raise ValueError(f"label_augment.elastic_control_points must be >= 2, got {self.elastic_control_points}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> LabelAugment | None:
        """A config mapping (or None: no augmentation) -> the checked settings.

        Raises:
            ValueError: an unknown key or a bad value.
        """
        if config is None:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown label_augment keys {unknown}; known: {sorted(known)}")
        return cls(**dict(config))

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for a checkpoint's hyperparameters)."""
        return asdict(self)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step's draws, seeded by ``(seed, step, rank)`` (independent streams)."""
    state = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


def spacing_dhw(affine: torch.Tensor) -> torch.Tensor:
    """affine (B, 4, 4) -> voxel size in mm (B, 3) along (D, H, W) = NIfTI (K, I, J)."""
    return torch.linalg.norm(affine[:, :3, :3].double(), dim=1)[:, [2, 0, 1]]


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """angles (B, 3) radians about the D, H, W axes -> rotation matrices (B, 3, 3)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rd = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    rh = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rw = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rw @ rh @ rd


def warp_labels(
    label: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor, displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """Resample label maps with nearest neighbour at ``matrix·x + shift + displacement(x)``.

    Args:
        label: (B, 1, D, H, W) integer maps.
        matrix: (B, 3, 3) in (D, H, W) order, acting on centred grid coordinates in [-1, 1] (corners aligned).
        shift: (B, 3) in the same coordinates.
        displacement: (B, 3, d, h, w) displacement (same coordinates), interpolated trilinearly to the grid; or None.

    Returns:
        (B, 1, D, H, W) maps of ``label``'s dtype; voxels read from outside the block are 0 (background).
    """
    b, _, *size = label.shape
    xyz = [2, 1, 0]  # grid_sample's coordinates are (W, H, D)
    theta = torch.cat((matrix[:, xyz][:, :, xyz], shift[:, xyz, None]), 2)  # (B, 3, 4)
    grid = F.affine_grid(theta.float(), [b, 1, *size], align_corners=True)  # (B, D, H, W, 3)
    if displacement is not None:
        field = F.interpolate(displacement.float(), size=size, mode="trilinear", align_corners=True)
        grid = grid + field[:, xyz].permute(0, 2, 3, 4, 1)
    out = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out.round().to(label.dtype)


def augment_labels(
    label: torch.Tensor, affine: torch.Tensor, config: LabelAugment, generator: torch.Generator
) -> torch.Tensor:
    """Randomly deformed copies of label maps (module docstring).

    Args:
        label: (B, 1, D, H, W) integer maps (0 = background).
        affine: (B, 4, 4) their affines (the voxel size turns the millimetre ranges into grid units).
        config: the ranges.
        generator: the draws' generator, on ``label``'s device (:func:`step_generator`).

    Returns:
        (B, 1, D, H, W) maps of ``label``'s dtype; every value is 0 or one of the input's values.
    """
    b, _, *size = label.shape
    dev = label.device
    k = config.elastic_control_points

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1); every draw is made whatever p says: a fixed stream
        return torch.rand(*shape, generator=generator, device=dev, dtype=torch.float64) * 2 - 1

    applied = torch.rand(b, generator=generator, device=dev, dtype=torch.float64) < config.p
    angles, scales, shift_mm = uniform(b, 3), uniform(b, 3), uniform(b, 3)
    displacement_mm = uniform(b, 3, k, k, k) * config.elastic_max_displacement_mm
    # half extent of the grid in mm per axis: grid coordinate 1 is this far from the centre
    half = spacing_dhw(affine.to(dev)) * (torch.tensor(size, device=dev, dtype=torch.float64) - 1).clamp(min=1) / 2
    mm_matrix = _rotation(angles * math.radians(config.degrees)) * (1 + scales * config.scales).unsqueeze(1)
    matrix = mm_matrix * half.unsqueeze(1) / half.unsqueeze(2)  # diag(1/half) · R·S · diag(half)
    shift = shift_mm * config.translation_mm / half
    displacement = displacement_mm / half.view(b, 3, 1, 1, 1)
    warped = warp_labels(label, matrix, shift, displacement)
    return torch.where(applied.view(b, 1, 1, 1, 1), warped, label)


def augment_training_maps(
    batch: Mapping[str, torch.Tensor], config: LabelAugment | None, step: int, rank: int = 0
) -> torch.Tensor:
    """A training batch's maps ``batch["label"]`` (B, 1, D, H, W), augmented with the step's seeded draws (using
    ``batch["affine"]`` (B, 4, 4) for the voxel size), or returned as they are when ``config`` is None.

    The one entry point of the label stages (the autoencoder's and the diffusion's ``training_step``).
    """
    label = batch["label"]
    if config is None:
        return label
    return augment_labels(label, batch["affine"], config, step_generator(config.seed, step, rank, label.device))
