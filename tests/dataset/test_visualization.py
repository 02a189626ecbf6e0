"""Montages, GIFs, summary figures: orientation from the affine, fixed windows, row order, sizes, colours."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from dataset.visualization import (
    HEADER_HEIGHT,
    MIN_TILE_PIXELS,
    TITLE_WIDTH,
    Subject,
    display_window,
    label_colours,
    order_rows,
    save_gif,
    save_montage,
    save_summary_figure,
    slice_indices,
)


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
    # (D, H, W) = (K, I, J) = (10, 16, 12): RAS tiles are J (12) rows by I (16) columns, under a header
    assert png.shape == (HEADER_HEIGHT + 2 * 12 * scale, TITLE_WIDTH + 4 * 16 * scale, 3)
    label_row = png[HEADER_HEIGHT + 12 * scale :, TITLE_WIDTH:]
    colours = {tuple(c) for c in label_row.reshape(-1, 3)}
    assert colours == {(0, 0, 0), tuple(label_colours(3)[2])}


def test_overlay_blends_labels_onto_the_image(tmp_path: Path) -> None:
    image, label = _volumes()
    plain = np.asarray(Image.open(save_montage(tmp_path / "a.png", [("i", image), ("l", label)], label_nc=3)))
    over = np.asarray(
        Image.open(save_montage(tmp_path / "b.png", [("i", image), ("l", label)], label_nc=3, overlay=True))
    )
    half = HEADER_HEIGHT + (plain.shape[0] - HEADER_HEIGHT) // 2
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


def _anatomy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An asymmetric (X, Y, Z) RAS volume, its label map and its RAS affine (anisotropic voxels)."""
    x, y, z = np.meshgrid(np.arange(14), np.arange(11), np.arange(9), indexing="ij")
    image = (x / 13.0 - 0.5 * (y / 10.0)).astype(np.float32)  # brighter towards the patient's right
    label = np.zeros((14, 11, 9), dtype=np.int64)
    label[9:13, 6:10, 2:7] = 1  # right anterior block
    label[1:4, 1:3, 3:8] = 2  # left posterior block
    affine = np.diag([0.9, 1.3, 2.5, 1.0])
    affine[:3, 3] = (-6.0, 4.0, 10.0)
    return image, label, affine


def _to_loader_order(ijk: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(ijk, (2, 0, 1))))  # (I, J, K) -> (D, H, W)


def _stored(orientation: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The same anatomy as it would be stored in RAS, LPS or with I and J swapped (PIS... via a permutation)."""
    image, label, affine = _anatomy()
    if orientation == "LPS":  # i' = X-1-i, j' = Y-1-j: negate the first two columns, move the origin
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = (image.shape[0] - 1, image.shape[1] - 1)
        image, label, affine = image[::-1, ::-1], label[::-1, ::-1], affine @ flip
    elif orientation == "swapped":  # stored as (J, I, K)
        perm = np.zeros((4, 4))
        perm[0, 1] = perm[1, 0] = perm[2, 2] = perm[3, 3] = 1.0
        image, label, affine = image.transpose(1, 0, 2), label.transpose(1, 0, 2), affine @ perm
    return _to_loader_order(image.copy()), _to_loader_order(label.copy()), affine


@pytest.mark.parametrize("orientation", ["LPS", "swapped"])
def test_same_anatomy_gives_identical_pngs_and_gifs_whatever_the_storage(tmp_path: Path, orientation: str) -> None:
    ras_img, ras_lab, ras_aff = _stored("RAS")
    other_img, other_lab, other_aff = _stored(orientation)
    assert ras_img.shape != other_img.shape or not torch.equal(ras_img, other_img)  # stored differently
    a = save_montage(tmp_path / "ras.png", [("real", ras_img), ("label", ras_lab)], affine=ras_aff, num_slices=4)
    b = save_montage(tmp_path / "o.png", [("real", other_img), ("label", other_lab)], affine=other_aff, num_slices=4)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    ga = save_gif(tmp_path / "ras.gif", ras_img, label=ras_lab, affine=ras_aff)
    gb = save_gif(tmp_path / "o.gif", other_img, label=other_lab, affine=other_aff)
    assert np.array_equal(iio.imread(ga, index=None), iio.imread(gb, index=None))
    # control: ignoring the affine (as montages did before) the two files do not look the same
    c = np.asarray(Image.open(save_montage(tmp_path / "c.png", [("real", other_img), ("label", other_lab)])))
    ras = np.asarray(Image.open(a))
    assert c.shape != ras.shape or not np.array_equal(c, ras)


def test_radiological_layout_and_physical_aspect(tmp_path: Path) -> None:
    """Patient right on the screen's left, anterior up; 0.9 x 1.3 mm voxels keep their aspect ratio."""
    _, label, affine = _anatomy()
    path = save_montage(tmp_path / "m.png", [("label", _to_loader_order(label))], affine=affine, num_slices=1)
    png = np.asarray(Image.open(path).convert("RGB"))[HEADER_HEIGHT:, TITLE_WIDTH:]
    height, width = png.shape[:2]
    assert abs(height / width - (11 * 1.3) / (14 * 0.9)) < 0.05  # aspect of the physical field of view
    right_anterior = tuple(label_colours(3)[1])
    ys, xs = np.nonzero((png == right_anterior).all(-1))
    assert xs.mean() < width / 2 and ys.mean() < height / 2  # upper left of the screen


def test_fixed_windows_not_min_max(tmp_path: Path) -> None:
    """A dim volume stays dim (no per-volume stretch); HU with the CT window equals model scale with [-1, 1]."""
    dim = torch.full((1, 4, 8, 8), -0.5)
    dim[..., :4] = 0.5
    png = np.asarray(Image.open(save_montage(tmp_path / "dim.png", [("real", dim)], num_slices=1)).convert("L"))
    tile = png[HEADER_HEIGHT:, TITLE_WIDTH:]
    assert set(np.unique(tile).tolist()) == {64, 191}  # -0.5 -> 64, 0.5 -> 191 of 255: not stretched to 0 / 255
    spec = {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0}
    hu = dim * 1000.0
    a = save_montage(tmp_path / "hu.png", [("real", hu)], window=display_window(spec, "data"), num_slices=1)
    b = save_montage(tmp_path / "model.png", [("real", dim)], window=display_window(spec, "model"), num_slices=1)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert display_window({"kind": "percentile"}, "data") == (-1.0, 1.0)


def test_rows_in_one_order(tmp_path: Path) -> None:
    image, label = _volumes()
    fake = -image
    shuffled = [("synthetic", fake), ("label", label), ("real", image)]
    assert [t for t, _ in order_rows(shuffled)] == ["real", "label", "synthetic"]
    assert [t for t, _ in order_rows([("input", image), ("reconstruction", fake), ("label", label)])] == [
        "input",
        "label",
        "reconstruction",
    ]
    assert [t for t, _ in order_rows([("synthetic", fake), ("label", label)])] == ["label", "synthetic"]
    a = save_montage(tmp_path / "a.png", shuffled, label_nc=3)
    b = save_montage(tmp_path / "b.png", [("real", image), ("label", label), ("synthetic", fake)], label_nc=3)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_summary_figure_has_every_subject_and_a_legend(tmp_path: Path) -> None:
    img, lab, aff = _stored("LPS")
    subjects = [Subject(f"s{i}", img, lab, img * 0.5, aff) for i in range(3)]
    names = ["background", "right_block", "left_block"]
    path = save_summary_figure(tmp_path / "summary.png", subjects, num_slices=3, class_names=names)
    png = np.asarray(Image.open(path).convert("RGB"))
    one = np.asarray(Image.open(save_montage(tmp_path / "one.png", [("r", img), ("l", lab), ("s", img * 0.5)],
                                             affine=aff, num_slices=3)).convert("RGB"))  # fmt: skip
    block = one.shape[0] - HEADER_HEIGHT
    assert png.shape[0] > 3 * (block + 2 * HEADER_HEIGHT)  # three subjects and a legend below them
    legend = png[3 * (block + 2 * HEADER_HEIGHT) :]
    for k in (1, 2):
        assert (legend == label_colours(3)[k]).all(-1).sum() >= 100  # a filled colour box per class
    with pytest.raises(ValueError):
        save_summary_figure(tmp_path / "none.png", [])
