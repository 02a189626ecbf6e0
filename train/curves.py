"""Loss and validation-metric curves of a run as PNG, drawn from the CSV logger's ``metrics.csv``.

A run folder gets ``curves_train.png`` (every ``train/*loss*`` series, one panel each: their scales differ) and
``curves_val.png`` (every ``val/*`` metric, one panel each), written by :class:`train.console.RunConsole` at each
validation and at the end of fit, or afterwards by :func:`write_run_curves` (the demo report calls it).

Drawn with Pillow only (no plotting library is a dependency): one line per series, x = the CSV log's ``step``
(Lightning's logging step: batches for the VQ-GAN, whose ``global_step`` advances by 2 per batch), the y
range is that of the values after the first tenth of the steps (early losses are often orders of magnitude
larger and would flatten the rest; points above the range are drawn on the top edge).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset.files import atomic_write

log = logging.getLogger(__name__)

Series = list[tuple[int, float]]

PANEL_W, PANEL_H = 360, 220
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 12, 24, 30
COLUMNS = 3
LINE_COLOUR = (31, 119, 180)
BEST_COLOUR = (214, 39, 40)


def read_metrics_csv(path: str | Path) -> dict[str, Series]:
    """Read a Lightning ``CSVLogger`` file into ``{metric: [(step, value), ...]}`` (rows without a value skipped).

    Raises:
        FileNotFoundError: no such file.
    """
    series: dict[str, Series] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or key is None or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(key, []).append((step, value))
    return series


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _draw_panel(
    draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, points: Series, best: str | None, whole_range: bool
) -> None:
    """One line chart in the box (x0, y0, x0 + PANEL_W, y0 + PANEL_H); ``best`` marks the min or max point.

    The y range leaves out the first tenth of the steps (see the module docstring) unless ``whole_range``.
    """
    font = _font(12)
    draw.text((x0 + MARGIN_L, y0 + 4), title, fill=(0, 0, 0), font=font)
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    if not points:
        draw.text((left + 8, top + 8), "no values", fill=(120, 120, 120), font=font)
        return
    steps = np.array([p[0] for p in points], dtype=np.float64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    x_lo, x_hi = float(steps.min()), float(steps.max())
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    tail = values[steps >= x_lo + 0.1 * (x_hi - x_lo)] if len(values) > 10 and not whole_range else values
    y_lo, y_hi = float(min(tail.min(), values[-1])), float(max(tail.max(), values[-1]))
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1.0), y_hi + 0.5 * (abs(y_hi) or 1.0)
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(step: float, value: float) -> tuple[float, float]:
        fx = (step - x_lo) / (x_hi - x_lo)
        fy = (min(max(value, y_lo), y_hi) - y_lo) / (y_hi - y_lo)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for k in range(5):  # y ticks and grid
        value = y_lo + (y_hi - y_lo) * k / 4
        _, py = to_px(x_lo, value)
        draw.line((left, py, right, py), fill=(230, 230, 230))
        draw.text((x0 + 4, py - 6), _fmt(value), fill=(0, 0, 0), font=font)
    for k in range(4):  # x ticks
        step = x_lo + (x_hi - x_lo) * k / 3
        px, _ = to_px(step, y_lo)
        draw.line((px, bottom, px, bottom + 4), fill=(120, 120, 120))
        draw.text((px - 10, bottom + 6), str(int(round(step))), fill=(0, 0, 0), font=font)
    draw.text((right - 60, bottom + 16), "logged step", fill=(90, 90, 90), font=_font(10))
    pixels = [to_px(s, v) for s, v in points]
    if len(pixels) == 1:
        px, py = pixels[0]
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=LINE_COLOUR)
    else:
        draw.line(pixels, fill=LINE_COLOUR, width=2)
    if best in ("min", "max"):
        i = int(np.argmin(values) if best == "min" else np.argmax(values))
        px, py = pixels[i]
        draw.ellipse((px - 4, py - 4, px + 4, py + 4), outline=BEST_COLOUR, width=2)
        label = f"{best} {_fmt(values[i])} @ {int(steps[i])}"
        draw.text((max(left + 2, min(px - 40, right - 110)), top + 4), label, fill=BEST_COLOUR, font=font)


def plot_panels(
    path: str | Path,
    panels: Sequence[tuple[str, Series, str | None]],
    title: str = "",
    overwrite: bool = True,
    whole_range: bool = False,
) -> Path:
    """Write a PNG grid of line charts.

    Args:
        path: ``.png`` destination (written atomically via ``dataset.files.atomic_write``).
        panels: ``[(title, [(step, value), ...], best), ...]``; ``best`` is ``"min"``, ``"max"`` or None.
        title: figure title on top.
        overwrite: replace an existing file (curves are redrawn as a run goes on).
        whole_range: the y range covers every value (a metric that peaks early); default: the loss rule of the
            module docstring.
    """
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    cols = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    head = 26 if title else 0
    canvas = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 6), title, fill=(0, 0, 0), font=_font(14))
    for n, (name, points, best) in enumerate(panels):
        _draw_panel(draw, (n % cols) * PANEL_W, head + (n // cols) * PANEL_H, name, points, best, whole_range)
    return atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG"), overwrite=overwrite, suffix=".png")


def best_mode(metric: str) -> str:
    """``"max"`` for metrics where higher is better (PSNR, SSIM, Dice, code usage), else ``"min"``."""
    name = metric.rsplit("/", 1)[-1].lower()
    return "max" if any(k in name for k in ("psnr", "ssim", "dice", "usage", "perplexity")) else "min"


def write_curves(metrics_csv: str | Path, out_dir: str | Path, title: str = "") -> list[Path]:
    """Draw ``curves_train.png`` (training losses) and ``curves_val.png`` (validation metrics) into ``out_dir``.

    Args:
        metrics_csv: the CSV logger's ``metrics.csv``.
        out_dir: folder of the PNGs (the run folder).
        title: prefix of the figure titles (e.g. the run's task and dataset).

    Returns:
        The PNGs written (a figure without any series is not written).
    """
    series = read_metrics_csv(metrics_csv)
    written = []
    train = [(k, v, None) for k, v in sorted(series.items()) if k.startswith("train/") and "loss" in k]
    val = [(k, v, best_mode(k)) for k, v in sorted(series.items()) if k.startswith("val/")]
    for name, panels, what in (("curves_train.png", train, "training losses"), ("curves_val.png", val, "validation")):
        if panels:
            written.append(plot_panels(Path(out_dir) / name, panels, title=f"{title} {what}".strip()))
    return written


def write_run_curves(run_dir: str | Path) -> list[Path]:
    """Curves of a finished run folder (``<run_dir>/csv/metrics.csv``, as config/logger/csv.yaml writes it).

    Returns:
        The PNGs written into ``run_dir``; an empty list when the run has no CSV log.
    """
    run_dir = Path(run_dir)
    csv_path = run_dir / "csv" / "metrics.csv"
    if not csv_path.is_file():
        log.warning("%s: no CSV log, no curves", run_dir)
        return []
    return write_curves(csv_path, run_dir, title=run_dir.name)
