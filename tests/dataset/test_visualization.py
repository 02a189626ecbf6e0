"""Montages and GIFs: sizes, colour maps, overlay, atomic writes without overwriting."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from dataset.visualization import MIN_TILE_PIXELS, TITLE_WIDTH, label_colours, save_gif, save_montage, slice_indices


def _volumes() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.linspace(-1, 1, 10 * 16 * 12).reshape(1, 10, 16, 12)
    label = torch.zeros(1, 10, 16, 12, dtype=torch.int64)
    label[0, :, 4:12, 3:9] = 2
    return image, label


def test_montage_layout_and_colours(tmp_path: Path) -> None:
    image, label = _volumes()
    path = save_montage(tmp_path / "m.png", [("image", image), ("label", label[0])], num_slices=4, label_nc=3)
    png = np.asarray(Image.open(path).convert("RGB"))
    scale = -(-MIN_TILE_PIXELS // 16)
    assert png.shape == (2 * 12 * scale, TITLE_WIDTH + 4 * 16 * scale, 3)  # rot90: tiles are (W, H)
    label_row = png[12 * scale :, TITLE_WIDTH:]
    colours = {tuple(c) for c in label_row.reshape(-1, 3)}
    assert colours == {(0, 0, 0), tuple(label_colours(3)[2])}


def test_overlay_blends_labels_onto_the_image(tmp_path: Path) -> None:
    image, label = _volumes()
    plain = np.asarray(Image.open(save_montage(tmp_path / "a.png", [("i", image), ("l", label)], label_nc=3)))
    over = np.asarray(
        Image.open(save_montage(tmp_path / "b.png", [("i", image), ("l", label)], label_nc=3, overlay=True))
    )
    half = plain.shape[0] // 2
    assert (plain[:half] == over[:half]).all()  # image row unchanged
    assert (plain[half:] != over[half:]).any()
    background = over[half:, TITLE_WIDTH:][(plain[half:, TITLE_WIDTH:] == 0).all(-1)]
    assert background.max() > 0  # image shows through where the label is background


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    image, _ = _volumes()
    path = save_montage(tmp_path / "m.png", [("x", image)])
    with pytest.raises(FileExistsError):
        save_montage(path, [("x", image)])
    save_montage(path, [("x", image)], overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_gif_has_one_frame_per_slice(tmp_path: Path) -> None:
    image, label = _volumes()
    path = save_gif(tmp_path / "v.gif", image, label=label, label_nc=3)
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 10 and frames.shape[2] == 2 * frames.shape[1] * 16 // 12  # image | overlay


@pytest.mark.parametrize(
    "rows",
    [[], [("a", torch.zeros(2, 3))], [("a", torch.zeros(4, 4, 4)), ("b", torch.zeros(4, 4, 5))]],
    ids=["empty", "2d", "shapes"],
)
def test_bad_rows(tmp_path: Path, rows: list) -> None:
    with pytest.raises(ValueError):
        save_montage(tmp_path / "x.png", rows)


def test_slice_indices_and_colour_table() -> None:
    assert slice_indices(32, 6) == [4, 9, 13, 18, 22, 27] and slice_indices(3, 6) == [0, 1, 2]
    colours = label_colours(40)
    assert colours.shape == (40, 3) and (colours[0] == 0).all()
    assert len({tuple(c) for c in colours}) == 40
