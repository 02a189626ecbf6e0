"""Montages and GIFs of volumes and label maps (PNG via Pillow, GIF via imageio), written atomically.

Display conventions: slices are axial (along D). A (H, W) slice is shown rotated by 90 degrees
(``np.rot90``): H (NIfTI I) runs left to right and W (NIfTI J) bottom to top, the usual viewer layout for
RAS-stored NIfTI. Image rows in [-1, 1] map to grey levels (values outside are clamped for display only);
integer rows are label maps drawn with a fixed colour table (class 0 black).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageDraw

from dataset.files import atomic_write

OVERLAY_ALPHA = 0.45
MIN_TILE_PIXELS = 96
TITLE_WIDTH = 90

_BASE_COLOURS = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
        [255, 255, 255],
    ],
    dtype=np.uint8,
)


def label_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colour table: 0 black, then 21 distinct colours, then golden-ratio hues."""
    colours = [c for c in _BASE_COLOURS[:num_classes]]
    golden = 0.618033988749895
    for k in range(len(colours), num_classes):
        hue = (k * golden) % 1.0
        rgb = np.array([abs(hue * 6 - 3) - 1, 2 - abs(hue * 6 - 2), 2 - abs(hue * 6 - 4)]).clip(
            0, 1
        )  # HSV -> RGB at full saturation and value
        colours.append((rgb * 205 + 50).astype(np.uint8))
    return np.stack(colours) if colours else np.zeros((0, 3), dtype=np.uint8)


def _to_dhw(volume: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a (1, D, H, W) or (D, H, W) volume, got shape {array.shape}")
    return array


def _is_label(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_


def _grey(slice_hw: np.ndarray) -> np.ndarray:
    grey = ((np.clip(slice_hw, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _render_label(slice_hw: np.ndarray, colours: np.ndarray, under: np.ndarray | None) -> np.ndarray:
    rgb = colours[np.clip(slice_hw, 0, len(colours) - 1)]
    if under is None:
        return rgb
    mask = (slice_hw > 0)[..., None]
    blended = (1 - OVERLAY_ALPHA) * under.astype(np.float32) + OVERLAY_ALPHA * rgb.astype(np.float32)
    return np.where(mask, blended, under).round().astype(np.uint8)


def slice_indices(depth: int, num_slices: int) -> list[int]:
    """Evenly spaced axial slices, away from the first and last slice when there are enough."""
    if num_slices >= depth:
        return list(range(depth))
    return [int(round(v)) for v in np.linspace(0, depth - 1, num_slices + 2)[1:-1]]


def save_montage(
    path: str | Path,
    rows: Sequence[tuple[str, torch.Tensor | np.ndarray]],
    num_slices: int = 6,
    label_nc: int | None = None,
    overlay: bool = False,
    overwrite: bool = False,
) -> Path:
    """Save a PNG grid: one row per volume, ``num_slices`` axial slices per row, a title on the left.

    Args:
        path: ``.png`` destination (parent folders are created).
        rows: ``[(title, volume), ...]``; each volume (1, D, H, W) or (D, H, W), all of one shape. Floating
            volumes are images in [-1, 1]; integer volumes are label maps.
        num_slices: slices per row, evenly spaced along D.
        label_nc: size of the colour table (default: largest label + 1).
        overlay: draw each label row over the image row above it (alpha blend) instead of on black.
        overwrite: replace an existing file.

    Returns:
        The written path.
    """
    if not rows:
        raise ValueError("save_montage needs at least one row")
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    volumes = [(title, _to_dhw(vol, title)) for title, vol in rows]
    shape = volumes[0][1].shape
    if any(v.shape != shape for _, v in volumes):
        raise ValueError(f"all rows must share one (D, H, W) shape, got {[v.shape for _, v in volumes]}")
    max_label = max((int(v.max()) for _, v in volumes if _is_label(v) and v.size), default=0)
    colours = label_colours(max(label_nc or 0, max_label + 1, 2))
    idx = slice_indices(shape[0], num_slices)
    scale = max(1, math.ceil(MIN_TILE_PIXELS / max(shape[1], shape[2])))

    rendered_rows = []
    previous_image: list[np.ndarray] | None = None
    for _, vol in volumes:
        tiles = []
        for n, d in enumerate(idx):
            sl = np.rot90(vol[d])
            if _is_label(vol):
                under = previous_image[n] if overlay and previous_image is not None else None
                tiles.append(_render_label(sl.astype(np.int64), colours, under))
            else:
                tiles.append(_grey(sl))
        if not _is_label(vol):
            previous_image = tiles
        rendered_rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rendered_rows, axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)

    row_height = grid.shape[0] // len(volumes)
    canvas = Image.new("RGB", (grid.shape[1] + TITLE_WIDTH, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (TITLE_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (title, _) in enumerate(volumes):
        draw.text((4, r * row_height + row_height // 2 - 6), title[:14], fill=(0, 0, 0))
    return atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG"), overwrite=overwrite, suffix=".png")


def save_gif(
    path: str | Path,
    volume: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray | None = None,
    label_nc: int | None = None,
    fps: float = 8.0,
    overwrite: bool = False,
) -> Path:
    """Save an animated GIF stepping through the axial slices of a volume.

    Args:
        path: ``.gif`` destination.
        volume: (1, D, H, W) or (D, H, W) image in [-1, 1].
        label: optional label map of the same shape, shown as an overlay next to the image.
        label_nc: size of the colour table (default: largest label + 1).
        fps: frames per second.
        overwrite: replace an existing file.

    Returns:
        The written path.
    """
    image = _to_dhw(volume, "volume")
    lab = _to_dhw(label, "label").astype(np.int64) if label is not None else None
    if lab is not None and lab.shape != image.shape:
        raise ValueError(f"label shape {lab.shape} differs from volume shape {image.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    colours = label_colours(max(label_nc or 0, (int(lab.max()) + 1) if lab is not None else 2, 2))
    scale = max(1, math.ceil(MIN_TILE_PIXELS / max(image.shape[1], image.shape[2])))
    frames = []
    for d in range(image.shape[0]):
        grey = _grey(np.rot90(image[d]))
        frame = grey if lab is None else np.concatenate([grey, _render_label(np.rot90(lab[d]), colours, grey)], axis=1)
        frames.append(frame.repeat(scale, axis=0).repeat(scale, axis=1))
    stack = np.stack(frames)
    return atomic_write(
        Path(path),
        lambda tmp: iio.imwrite(tmp, stack, extension=".gif", duration=1000.0 / fps, loop=0),
        overwrite=overwrite,
        suffix=".gif",
    )
