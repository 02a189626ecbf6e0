"""Say what a dataset will do to its volumes before training, instead of doing it silently.

:func:`log_split_summary` reads only the NIfTI headers of a split and logs, in a few lines, how many volumes the
split has, which intensity spec maps them to [-1, 1], how many are padded or cropped to the block size (with an
example), and the voxel sizes, i.e. that nothing is resampled (the datasets never resample; only generation does,
to the dataset config's ``voxel_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset.nifti import load_header, voxel_size_dhw

log = logging.getLogger("dataset")


def _shape_dhw(ijk: Sequence[int]) -> tuple[int, int, int]:
    return int(ijk[2]), int(ijk[0]), int(ijk[1])


def _intensity_text(intensity: Mapping[str, Any] | None) -> str:
    if intensity is None or intensity.get("kind") == "none":
        return "none (images must already lie in [-1, 1])"
    params = ", ".join(f"{k} {v}" for k, v in intensity.items() if k not in ("kind", "invertible"))
    return f"{intensity['kind']} ({params})" if params else str(intensity["kind"])


def log_split_summary(
    name: str,
    split: str,
    images: Sequence[Path],
    block_size: Sequence[int] | None,
    intensity: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Log a split's size, intensity spec, padding/cropping and voxel sizes, from the headers alone.

    Args:
        name: dataset (or folder) name for the log lines.
        split: the split's name.
        images: image files of the split.
        block_size: (D, H, W) the dataset centre-crops/pads to, or None (sizes kept).
        intensity: the validated intensity spec, or None.

    Returns:
        The counts logged: ``{"volumes", "padded", "cropped", "voxel_sizes"}`` (voxel sizes (D, H, W) in mm,
        distinct values rounded to 1e-3).
    """
    shapes, sizes = [], []
    for path in images:
        # The header only (nibabel reads voxels lazily), with the declared size checked against the file.
        img = load_header(path)
        shapes.append(_shape_dhw(img.shape[:3]))
        sizes.append(tuple(round(v, 3) for v in voxel_size_dhw(img.affine)))
    summary: dict[str, Any] = {"volumes": len(shapes), "padded": 0, "cropped": 0, "voxel_sizes": sorted(set(sizes))}
    log.info("%s %s: %d volumes; intensity %s", name, split, len(shapes), _intensity_text(intensity))
    if not shapes:
        return summary
    if block_size is not None:
        block = tuple(int(b) for b in block_size)
        padded = [s for s in shapes if any(n < b for n, b in zip(s, block, strict=True))]
        cropped = [s for s in shapes if any(n > b for n, b in zip(s, block, strict=True))]
        summary["padded"], summary["cropped"] = len(padded), len(cropped)
        block_text = "x".join(map(str, block))
        for what, hit, how in (("padded", padded, "image -1, labels background"), ("cropped", cropped, "centred")):
            if hit:
                log.info(
                    "%s %s: %d of %d volumes are %s to block_size %s (%s), e.g. %s -> %s",
                    name,
                    split,
                    len(hit),
                    len(shapes),
                    what,
                    block_text,
                    how,
                    "x".join(map(str, hit[0])),
                    block_text,
                )
        if cropped:
            log.warning(
                "%s %s: cropping drops anatomy at the borders of %d volumes; a larger block_size keeps it",
                name,
                split,
                len(cropped),
            )
        if not padded and not cropped:
            log.info("%s %s: every volume is exactly block_size %s", name, split, block_text)
    else:
        log.info("%s %s: block_size null, volumes keep their sizes (%d distinct)", name, split, len(set(shapes)))
    distinct = summary["voxel_sizes"]
    if len(distinct) == 1:
        log.info("%s %s: voxel size %s mm (D, H, W) for every volume; no resampling", name, split, list(distinct[0]))
    else:
        lo, hi = np.min(distinct, axis=0).tolist(), np.max(distinct, axis=0).tolist()
        log.warning(
            "%s %s: %d different voxel sizes, from %s to %s mm (D, H, W); volumes are NOT resampled (each is used on "
            "its own grid): resample the files to one spacing for a consistent model",
            name,
            split,
            len(distinct),
            lo,
            hi,
        )
    return summary
