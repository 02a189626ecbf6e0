"""The sample contract shared by every dataset, both training stages, generation and evaluation.

A sample is a dict::

    {"image": (1, D, H, W) float32 in [-1, 1],
     "label": (1, D, H, W) int64 in [0, label_nc),
     "affine": (4, 4) float64 voxel-to-world (RAS+, mm) of the *stored* array,
     "id": str}

D is the slice axis (superior-inferior for axial data) for every dataset and both stages. Arrays read
from NIfTI as (I, J, K) are permuted to (K, I, J) = (D, H, W); ``affine`` always describes the NIfTI
(I, J, K) order so it can be written back unchanged (see ``dataset.nifti``).

One-hot encoding happens once, in :func:`one_hot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch


class DataError(ValueError):
    """Bad input data. The message always names the offending file (or sample id) and the problem."""


class Sample(TypedDict):
    """One training/evaluation example (see module docstring for shapes and ranges)."""

    image: torch.Tensor
    label: torch.Tensor
    affine: torch.Tensor
    id: str


def check_class_names(label_nc: int, class_names: Sequence[str] | None, where: str = "dataset config") -> None:
    """Raise ``ValueError`` (one line) unless ``class_names`` has exactly ``label_nc`` entries (None passes).

    A mismatch would silently shift every per-class number (Dice tables, colour keys) by a class.
    """
    if class_names is None:
        return
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    if len(names) != int(label_nc):
        raise ValueError(
            f"{where}: label_nc={label_nc} but {len(names)} class_names {names}; give one name per class, "
            "background included"
        )


def check_label_range(label: torch.Tensor, label_nc: int, source: str) -> None:
    """Raise :class:`DataError` unless every label value lies in ``[0, label_nc)``.

    Args:
        label: integer tensor of any shape.
        label_nc: number of classes, background included.
        source: file name or sample id, quoted in the error.
    """
    if label.is_floating_point():
        if not torch.equal(label, label.round()):
            raise DataError(f"{source}: label map holds non-integer values; expected integer class ids")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= label_nc:
        bad = sorted({int(v) for v in torch.unique(label) if v < 0 or v >= label_nc})
        raise DataError(
            f"{source}: label values {bad[:10]} outside [0, {label_nc}); the dataset config says label_nc={label_nc}"
        )


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Turn an integer label map into a float one-hot map (the only place this happens).

    Args:
        label: (B, 1, D, H, W) or (1, D, H, W) integer tensor with values in [0, num_classes).
        num_classes: K, background included.

    Returns:
        (B, K, D, H, W) or (K, D, H, W) float32 tensor on ``label``'s device.

    Raises:
        DataError: values outside [0, num_classes) (``F.one_hot`` would fail obscurely or on the GPU only).
    """
    if label.dim() not in (4, 5) or label.shape[-4] != 1:
        raise ValueError(f"label must be (B, 1, D, H, W) or (1, D, H, W), got {tuple(label.shape)}")
    check_label_range(label, num_classes, "label batch")
    # Scattered straight into the float map: F.one_hot's int64 (..., K) map, its float copy and the contiguous copy
    # after moving K forward would be three full-size transients (the int64 one twice the size of the result).
    shape = (*label.shape[:-4], num_classes, *label.shape[-3:])
    return torch.zeros(shape, dtype=torch.float32, device=label.device).scatter_(-4, label.long(), 1.0)


def validate_sample(sample: dict, label_nc: int) -> None:
    """Check a sample against the contract; raise :class:`DataError` naming ``sample['id']`` on violation."""
    sid = str(sample.get("id", "<no id>"))
    for key in ("image", "label", "affine", "id"):
        if key not in sample:
            raise DataError(f"{sid}: sample lacks key {key!r}")
    image, label, affine = sample["image"], sample["label"], sample["affine"]
    if image.dim() != 4 or image.shape[0] != 1 or image.dtype != torch.float32:
        raise DataError(f"{sid}: image must be (1, D, H, W) float32, got {tuple(image.shape)} {image.dtype}")
    if label.shape != image.shape or label.dtype != torch.int64:
        raise DataError(
            f"{sid}: label must be int64 with the image's shape {tuple(image.shape)}, got "
            f"{tuple(label.shape)} {label.dtype}"
        )
    if tuple(affine.shape) != (4, 4):
        raise DataError(f"{sid}: affine must be (4, 4), got {tuple(affine.shape)}")
    if not torch.isfinite(image).all():
        raise DataError(f"{sid}: image holds NaN or Inf voxels")
    if float(image.min()) < -1.0 - 1e-5 or float(image.max()) > 1.0 + 1e-5:
        raise DataError(f"{sid}: image values [{float(image.min()):.3f}, {float(image.max()):.3f}] outside [-1, 1]")
    check_label_range(label, label_nc, sid)
