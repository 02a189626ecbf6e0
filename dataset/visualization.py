"""Montages, GIFs and summary figures of volumes and label maps (PNG via Pillow, GIF via imageio).

Display conventions, the same in every figure the project writes:

- Orientation from the affine, as 3D Slicer and ITK-SNAP show an axial view: each volume is reoriented to RAS
  (nearest axes of its affine, ``nibabel.orientations``), slices are axial (along S, inferior to superior), and a
  slice is shown in the radiological convention: the patient's right on the left of the screen, anterior at
  the top. So the same anatomy looks the same whether its file is stored RAS, LPS or with permuted axes.
  Without an affine a volume is taken as RAS-stored (identity affine). Tiles keep the physical aspect ratio
  of anisotropic in-plane voxels.
- A fixed intensity window per figure, never per-volume min-max: model-scale images use [-1, 1]; images in data
  units use the dataset's window (:func:`display_window`: the CT window in HU). Values outside are clamped for
  display only.
- Rows in one order: images named real/input/image first, then label maps, then everything else (synthetic,
  reconstruction), i.e. real | label | synthetic (:func:`order_rows`). Integer volumes are label maps, drawn
  with a fixed colour table (class 0 black); a legend names the classes when ``class_names`` is given.
- A header above the tiles gives each slice's position: the S world coordinate in mm (its index without an
  affine).

Files are written atomically with ``dataset.files.atomic_write``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import torch
from PIL import Image, ImageDraw

from dataset.contract import DataError
from dataset.files import atomic_write
from dataset.label_table import load_class_ids, recorded_label_table
from dataset.nifti import load_image

OVERLAY_ALPHA = 0.45
MIN_TILE_PIXELS = 96
TITLE_WIDTH = 90
HEADER_HEIGHT = 16
LEGEND_ROW_HEIGHT = 18
MODEL_WINDOW = (-1.0, 1.0)
#: Row titles that mark the real image (drawn first).
REAL_NAMES = ("real", "input", "image", "original")
#: Row titles of generated images (never taken for the real one).
GENERATED_NAMES = ("synthetic", "sample", "reconstruction", "fake", "generated")

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


def display_window(intensity: Mapping[str, Any] | None, units: str = "model") -> tuple[float, float]:
    """The fixed grey-level window of a dataset's images.

    Args:
        intensity: the dataset config's intensity spec (``dataset.intensity``).
        units: ``"model"`` for images in the model's [-1, 1] scale; ``"data"`` for images in the data's units
            (generation output, raw files): the CT window in HU for ``ct_window``, [-1, 1] otherwise (the other
            kinds are not inverted, so their outputs stay in [-1, 1]).
    """
    if units not in ("model", "data"):
        raise ValueError(f"units must be 'model' or 'data', got {units!r}")
    if units == "data" and intensity is not None and intensity.get("kind") == "ct_window":
        return float(intensity.get("hu_min", -1000.0)), float(intensity.get("hu_max", 1000.0))
    return MODEL_WINDOW


def order_rows(rows: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Stable order real | label | everything else: the row titled real/input/image/original (else the first
    image row not titled synthetic/sample/reconstruction/fake/generated), then label maps (integer volumes or
    titles containing "label"), then the rest (synthetic, reconstruction)."""

    def is_label(row: tuple[str, Any]) -> bool:
        title, vol = row
        dtype = vol.dtype if hasattr(vol, "dtype") else np.asarray(vol).dtype
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.floating)
        return not floating or "label" in title.lower()

    real = [n for n, row in enumerate(rows) if row[0].lower() in REAL_NAMES]
    if not real:  # no row is named as the real image: the first image row not named as generated plays its part
        candidates = [n for n, row in enumerate(rows) if not is_label(row) and row[0].lower() not in GENERATED_NAMES]
        real = candidates[:1]

    def rank(n: int) -> int:
        return 0 if n in real else 1 if is_label(rows[n]) else 2

    return [rows[n] for n in sorted(range(len(rows)), key=rank)]


def _to_dhw(volume: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a (1, D, H, W) or (D, H, W) volume, got shape {array.shape}")
    return array


def _is_label(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_


def _affine(affine: torch.Tensor | np.ndarray | None) -> np.ndarray:
    if affine is None:
        return np.eye(4)
    aff = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    aff = aff.astype(np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite, invertible (4, 4) matrix, got {aff.tolist()}")
    return aff


@dataclass
class RASView:
    """A volume reoriented to RAS for display.

    Attributes:
        array: (X, Y, Z) voxels, axes pointing to patient Right, Anterior, Superior.
        affine: (4, 4) affine of ``array``.
        spacing: (sx, sy, sz) voxel size in mm.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def from_dhw(cls, volume_dhw: np.ndarray, affine: np.ndarray) -> RASView:
        """Reorient a loader-order (D, H, W) = (K, I, J) volume with the affine of its stored (I, J, K) array."""
        ijk = np.transpose(volume_dhw, (1, 2, 0))
        ornt = nib.orientations.io_orientation(affine)
        array = np.ascontiguousarray(nib.orientations.apply_orientation(ijk, ornt))
        ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, ijk.shape)
        sx, sy, sz = (float(v) for v in np.linalg.norm(ras_affine[:3, :3], axis=0))
        return cls(array, ras_affine, (sx, sy, sz))

    @property
    def depth(self) -> int:
        return int(self.array.shape[2])

    def axial(self, k: int) -> np.ndarray:
        """Axial slice ``k`` (along S) as a (rows, cols) screen tile: anterior up, patient right on the left."""
        return self.array[::-1, ::-1, k].T

    def position_mm(self, k: int) -> float:
        """World S coordinate (mm) of the centre of axial slice ``k``."""
        centre = np.array([(self.array.shape[0] - 1) / 2, (self.array.shape[1] - 1) / 2, k, 1.0])
        return float((self.affine @ centre)[2])


def _grey(slice_2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    grey = ((np.clip(slice_2d.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _render_label(slice_2d: np.ndarray, colours: np.ndarray, under: np.ndarray | None) -> np.ndarray:
    rgb = colours[np.clip(slice_2d, 0, len(colours) - 1)]
    if under is None:
        return rgb
    mask = (slice_2d > 0)[..., None]
    blended = (1 - OVERLAY_ALPHA) * under.astype(np.float32) + OVERLAY_ALPHA * rgb.astype(np.float32)
    return np.where(mask, blended, under).round().astype(np.uint8)


def slice_indices(depth: int, num_slices: int) -> list[int]:
    """Evenly spaced axial slices, away from the first and last slice when there are enough."""
    if num_slices >= depth:
        return list(range(depth))
    return [int(round(v)) for v in np.linspace(0, depth - 1, num_slices + 2)[1:-1]]


def _tile_size(view: RASView) -> tuple[int, int]:
    """(width, height) in pixels of one tile: physical aspect ratio, at least MIN_TILE_PIXELS on the long side."""
    sx, sy, _ = view.spacing
    base = min(sx, sy)
    w, h = view.array.shape[0] * sx / base, view.array.shape[1] * sy / base
    scale = max(1, math.ceil(MIN_TILE_PIXELS / max(w, h)))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _resize(tile: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (tile.shape[1], tile.shape[0]) == size:
        return tile
    return np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.NEAREST))


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"window needs lo < hi, got {window}")
    return lo, hi


def _prepare(
    rows: Sequence[tuple[str, torch.Tensor | np.ndarray]], affine: np.ndarray, reorder: bool
) -> list[tuple[str, RASView, bool]]:
    if not rows:
        raise ValueError("a figure needs at least one row")
    volumes = [(title, _to_dhw(vol, title)) for title, vol in (order_rows(rows) if reorder else rows)]
    shape = volumes[0][1].shape
    if any(v.shape != shape for _, v in volumes):
        raise ValueError(f"all rows must share one (D, H, W) shape, got {[v.shape for _, v in volumes]}")
    return [(title, RASView.from_dhw(v, affine), _is_label(v)) for title, v in volumes]


def _render_block(
    views: list[tuple[str, RASView, bool]],
    num_slices: int,
    colours: np.ndarray,
    window: tuple[float, float],
    overlay: bool,
) -> tuple[np.ndarray, list[float], int]:
    """Tiles of every row side by side: returns (grid (H, W, 3) uint8, slice positions in mm, tile width)."""
    ref = views[0][1]
    idx = slice_indices(ref.depth, num_slices)
    size = _tile_size(ref)
    rendered_rows = []
    previous_image: list[np.ndarray] | None = None
    for _, view, is_label in views:
        tiles = []
        for n, k in enumerate(idx):
            sl = view.axial(k)
            if is_label:
                under = previous_image[n] if overlay and previous_image is not None else None
                tiles.append(_render_label(sl.astype(np.int64), colours, under))
            else:
                tiles.append(_grey(sl, window))
        if not is_label:
            previous_image = tiles
        rendered_rows.append(np.concatenate([_resize(t, size) for t in tiles], axis=1))
    return np.concatenate(rendered_rows, axis=0), [ref.position_mm(k) for k in idx], size[0]


def _colours_for(views: list[tuple[str, RASView, bool]], label_nc: int | None, class_names: Sequence[str] | None):
    max_label = max((int(v.array.max()) for _, v, lab in views if lab and v.array.size), default=0)
    return label_colours(max(label_nc or 0, len(class_names or ()), max_label + 1, 2))


def _draw_header(draw: ImageDraw.ImageDraw, y: int, positions: list[float], tile_w: int, has_affine: bool) -> None:
    draw.text((4, y + 2), "R | L  axial", fill=(90, 90, 90))
    for n, z in enumerate(positions):
        text = f"S {z:.1f} mm" if has_affine else f"slice {z:.0f}"
        draw.text((TITLE_WIDTH + n * tile_w + 3, y + 2), text, fill=(0, 0, 0))


def _legend_height(class_names: Sequence[str] | None, width: int) -> int:
    if not class_names:
        return 0
    per_row = max(1, width // 140)
    return LEGEND_ROW_HEIGHT * math.ceil(len(class_names) / per_row) + 4


def _draw_legend(
    draw: ImageDraw.ImageDraw, y: int, class_names: Sequence[str], colours: np.ndarray, width: int
) -> None:
    per_row = max(1, width // 140)
    for k, name in enumerate(class_names):
        x = 4 + (k % per_row) * 140
        yy = y + 2 + (k // per_row) * LEGEND_ROW_HEIGHT
        draw.rectangle((x, yy + 2, x + 12, yy + 14), fill=tuple(int(c) for c in colours[k]), outline=(0, 0, 0))
        draw.text((x + 16, yy + 2), f"{k} {name}"[:20], fill=(0, 0, 0))


def _save_png(path: str | Path, canvas: Image.Image, overwrite: bool) -> Path:
    return atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG"), overwrite=overwrite, suffix=".png")


def save_montage(
    path: str | Path,
    rows: Sequence[tuple[str, torch.Tensor | np.ndarray]],
    num_slices: int = 6,
    label_nc: int | None = None,
    overlay: bool = False,
    overwrite: bool = False,
    affine: torch.Tensor | np.ndarray | None = None,
    window: tuple[float, float] = MODEL_WINDOW,
    class_names: Sequence[str] | None = None,
    reorder: bool = True,
) -> Path:
    """Save a PNG grid: one row per volume, ``num_slices`` axial slices per row, a title on the left.

    Args:
        path: ``.png`` destination (parent folders are created).
        rows: ``[(title, volume), ...]``; each volume (1, D, H, W) or (D, H, W) in the loaders' axis order, all of
            one shape. Floating volumes are images; integer volumes are label maps.
        num_slices: slices per row, evenly spaced along the superior axis.
        label_nc: size of the colour table (default: largest label + 1).
        overlay: draw each label row over the image row above it (alpha blend) instead of on black.
        overwrite: replace an existing file.
        affine: (4, 4) affine of the volumes' stored (I, J, K) arrays (a sample's ``affine``); None = RAS-stored.
        window: (lo, hi) intensities shown black and white (:func:`display_window`).
        class_names: names of the label classes, drawn as a colour legend below the grid.
        reorder: put the rows in the order real | label | others (:func:`order_rows`).

    Returns:
        The written path.
    """
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    window = _check_window(window)
    views = _prepare(rows, _affine(affine), reorder)
    colours = _colours_for(views, label_nc, class_names)
    grid, positions, tile_w = _render_block(views, num_slices, colours, window, overlay)
    width = grid.shape[1] + TITLE_WIDTH
    legend_h = _legend_height(class_names, width)
    canvas = Image.new("RGB", (width, HEADER_HEIGHT + grid.shape[0] + legend_h), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (TITLE_WIDTH, HEADER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    _draw_header(draw, 0, positions, tile_w, affine is not None)
    row_height = grid.shape[0] // len(views)
    for r, (title, _, _) in enumerate(views):
        draw.text((4, HEADER_HEIGHT + r * row_height + row_height // 2 - 6), title[:14], fill=(0, 0, 0))
    if class_names:
        _draw_legend(draw, HEADER_HEIGHT + grid.shape[0], class_names, colours, width)
    return _save_png(path, canvas, overwrite)


@dataclass
class Subject:
    """One test subject of a summary figure: volumes (1, D, H, W) or (D, H, W) on one grid, and its affine."""

    sid: str
    real: torch.Tensor | np.ndarray
    label: torch.Tensor | np.ndarray
    synthetic: torch.Tensor | np.ndarray
    affine: torch.Tensor | np.ndarray | None = None


def save_summary_figure(
    path: str | Path,
    subjects: Sequence[Subject],
    num_slices: int = 6,
    label_nc: int | None = None,
    class_names: Sequence[str] | None = None,
    window: tuple[float, float] = MODEL_WINDOW,
    synthetic_window: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """One PNG for a report: real | label | synthetic rows for every subject, slice positions, a class legend.

    Args:
        path: ``.png`` destination.
        subjects: the subjects, drawn top to bottom in this order.
        num_slices: axial slices per row.
        label_nc: size of the colour table (default: largest label + 1, or the number of class names).
        class_names: class names for the legend (default: class numbers).
        window: grey-level window of the real images.
        synthetic_window: window of the synthetic images (default: ``window``).
        overwrite: replace an existing file.
    """
    if not subjects:
        raise ValueError("save_summary_figure needs at least one subject")
    window = _check_window(window)
    syn_window = _check_window(synthetic_window or window)
    blocks = []
    max_label = 0
    for s in subjects:
        lab = _to_dhw(s.label, f"{s.sid} label")
        max_label = max(max_label, int(lab.max()) if lab.size else 0)
    nc = max(label_nc or 0, len(class_names or ()), max_label + 1, 2)
    names = list(class_names) if class_names else [str(k) for k in range(nc)]
    colours = label_colours(nc)
    for s in subjects:
        aff = _affine(s.affine)
        real = _prepare([("real", s.real)], aff, False)
        label = _prepare([("label", _to_dhw(s.label, "label").astype(np.int64))], aff, False)
        syn = _prepare([("synthetic", s.synthetic)], aff, False)
        if not (real[0][1].array.shape == label[0][1].array.shape == syn[0][1].array.shape):
            raise ValueError(f"{s.sid}: real, label and synthetic volumes must share one shape")
        grid_r, positions, tile_w = _render_block(real, num_slices, colours, window, False)
        grid_l, _, _ = _render_block(label, num_slices, colours, window, False)
        grid_s, _, _ = _render_block(syn, num_slices, colours, syn_window, False)
        blocks.append((s.sid, np.concatenate([grid_r, grid_l, grid_s], axis=0), positions, tile_w, s.affine))
    width = max(b[1].shape[1] for b in blocks) + TITLE_WIDTH
    legend_h = _legend_height(names, width)
    height = sum(HEADER_HEIGHT * 2 + b[1].shape[0] for b in blocks) + legend_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for sid, grid, positions, tile_w, affine in blocks:
        draw.text((4, y + 2), f"subject {sid}", fill=(0, 0, 0))
        _draw_header(draw, y + HEADER_HEIGHT, positions, tile_w, affine is not None)
        y += 2 * HEADER_HEIGHT
        canvas.paste(Image.fromarray(grid), (TITLE_WIDTH, y))
        row_height = grid.shape[0] // 3
        for r, title in enumerate(("real", "label", "synthetic")):
            draw.text((4, y + r * row_height + row_height // 2 - 6), title, fill=(0, 0, 0))
        y += grid.shape[0]
    _draw_legend(draw, y, names, colours, width)
    return _save_png(path, canvas, overwrite)


def save_gif(
    path: str | Path,
    volume: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray | None = None,
    label_nc: int | None = None,
    fps: float = 8.0,
    overwrite: bool = False,
    affine: torch.Tensor | np.ndarray | None = None,
    window: tuple[float, float] = MODEL_WINDOW,
) -> Path:
    """Save an animated GIF stepping through the axial slices (inferior to superior) of a volume.

    Args:
        path: ``.gif`` destination.
        volume: (1, D, H, W) or (D, H, W) image.
        label: optional label map of the same shape, shown as an overlay next to the image.
        label_nc: size of the colour table (default: largest label + 1).
        fps: frames per second.
        overwrite: replace an existing file.
        affine: (4, 4) affine of the stored (I, J, K) array; None = RAS-stored.
        window: (lo, hi) intensities shown black and white.

    Returns:
        The written path.
    """
    image = _to_dhw(volume, "volume")
    lab = _to_dhw(label, "label").astype(np.int64) if label is not None else None
    if lab is not None and lab.shape != image.shape:
        raise ValueError(f"label shape {lab.shape} differs from volume shape {image.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    window = _check_window(window)
    aff = _affine(affine)
    view = RASView.from_dhw(image, aff)
    lab_view = RASView.from_dhw(lab, aff) if lab is not None else None
    colours = label_colours(max(label_nc or 0, (int(lab.max()) + 1) if lab is not None else 2, 2))
    size = _tile_size(view)
    frames = []
    for k in range(view.depth):
        grey = _grey(view.axial(k), window)
        if lab_view is None:
            frame = _resize(grey, size)
        else:
            over = _render_label(lab_view.axial(k), colours, grey)
            frame = np.concatenate([_resize(grey, size), _resize(over, size)], axis=1)
        frames.append(frame)
    stack = np.stack(frames)
    return atomic_write(
        Path(path),
        lambda tmp: iio.imwrite(tmp, stack, extension=".gif", duration=1000.0 / fps, loop=0),
        overwrite=overwrite,
        suffix=".gif",
    )


def pair_montages(
    pairs: Path, report: Path, class_names: list[str], count: int = 4, window: tuple[float, float] = MODEL_WINDOW
) -> list[str]:
    """(label | image) montages of the first ``count`` generated pairs in ``pairs/{labels,images}``, into ``report``.

    Each label map ``pairs/labels/<id>.nii.gz`` is drawn above its image ``pairs/images/<id>_s0.nii.gz`` as
    ``report/pair_<id>_montage.png``. Maps in the user's ids (a model trained with a label table) are read through
    the table their run record holds, so colours and legend follow the classes.

    Returns:
        the report's Markdown lines, one image each.
    """
    table = recorded_label_table(pairs / "labels")
    if table is not None and table.label_nc != len(class_names):
        raise DataError(f"{pairs / 'labels'}: label table of {table.label_nc} classes, {len(class_names)} names given")
    shown = []
    for path in sorted((pairs / "labels").glob("*.nii.gz"))[:count]:
        vid = path.name[: -len(".nii.gz")]
        label, affine = load_class_ids(path, len(class_names), table)
        image, _ = load_image(pairs / "images" / f"{vid}_s0.nii.gz")
        rows = [("new label", torch.from_numpy(label)), ("synthetic", torch.from_numpy(image))]
        save_montage(report / f"pair_{vid}_montage.png", rows, num_slices=8, label_nc=len(class_names),
                     affine=affine, class_names=class_names, window=window)  # fmt: skip
        shown.append(f"![{vid}](pair_{vid}_montage.png)")
    return shown
