"""The one resampler (dataset.resample) against TorchIO's (SimpleITK) and MONAI's on an oblique, anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.resample import box, index_map, resample, resample_to_shape, same_extent, same_extent_shape
from tests.dataset.fakes import oblique_affine

AFFINE = oblique_affine(zooms=(1.5, 0.8, 2.0))
SHAPE = (11, 19, 9)  # (I, J, K) of the source


def smooth_image(shape: tuple[int, int, int]) -> np.ndarray:
    """Float32 (I, J, K) volume, smooth enough that linear interpolation is the only difference that can show."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (np.sin(2.0 * grid[0]) * np.cos(1.5 * grid[1]) + 0.5 * grid[2] ** 2).astype(np.float32)


def blob_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Nested ellipsoids of classes 1..3 on background 0, (I, J, K) int64."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    dist = np.sqrt(sum((g / r) ** 2 for g, r in zip(grid, (0.9, 0.7, 0.8))))
    return np.select([dist < 0.4, dist < 0.7, dist < 1.0], [3, 2, 1], 0).astype(np.int64)


def inside(grids, shape) -> np.ndarray:
    """Mask of new voxels whose source point lies within the source's outer voxel centres (no padding rule)."""
    masks = [(g.coords >= 0) & (g.coords <= n - 1) for g, n in zip(grids, shape)]
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


# (new shape, grid): finer on one axis and coarser on another; then a box that starts and ends off the voxel grid.
CASES = {
    "same_extent": ((17, 12, 20), lambda: [same_extent(n, m) for n, m in zip(SHAPE, (17, 12, 20))]),
    "box": ((9, 23, 14), lambda: [box(1.3, 10.2, 9), box(-0.6, 17.1, 23), box(2.2, 8.9, 14)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torchio_on_an_oblique_anisotropic_grid(case: str) -> None:
    import torchio as tio

    new_shape, make = CASES[case]
    grids = make()
    new_affine = AFFINE @ index_map(grids)
    image, label = smooth_image(SHAPE), blob_labels(SHAPE)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=AFFINE),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=AFFINE),
    )
    ref = tio.Resample(target=(new_shape, new_affine), image_interpolation="linear", label_interpolation="nearest")(
        subject
    )
    assert np.allclose(ref["image"].affine, new_affine)  # TorchIO built the same world grid
    ours_image = resample(image, grids, order=1)
    ours_label = resample(label, grids, order=0)
    assert ours_image.shape == new_shape and ours_image.dtype == np.float32 and ours_label.dtype == np.int64
    keep = inside(grids, SHAPE)
    assert keep.mean() > 0.6
    np.testing.assert_allclose(ours_image[keep], ref["image"].data[0].numpy()[keep], atol=1e-5)
    # Nearest voxel: only points (almost) halfway between two source voxels may round the other way.
    agree = ours_label[keep] == ref["label"].data[0].numpy()[keep]
    assert agree.mean() > 0.99


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_monai_everywhere_with_edge_padding(case: str) -> None:
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    new_shape, make = CASES[case]
    grids = make()
    new_affine = torch.from_numpy(AFFINE @ index_map(grids))
    image, label = smooth_image(SHAPE), blob_labels(SHAPE)
    refs = [
        SpatialResample(mode=mode, padding_mode="border", dtype=np.float64)(
            MetaTensor(torch.from_numpy(array)[None].double(), affine=torch.from_numpy(AFFINE)),
            dst_affine=new_affine,
            spatial_size=new_shape,
        )[0].numpy()
        for array, mode in ((image, "bilinear"), (label, "nearest"))
    ]
    # "nearest" mode repeats the edge voxel beyond the source, as MONAI's border padding does.
    np.testing.assert_allclose(resample(image, grids, order=1), refs[0], atol=1e-6)
    assert (resample(label, grids, order=0) == refs[1]).mean() > 0.99


def test_antialias_removes_what_the_coarser_grid_cannot_hold() -> None:
    stripes = np.tile(np.array([1.0, -1.0], dtype=np.float32), 30)[:, None, None] * np.ones((60, 4, 4), np.float32)
    grids = [same_extent(60, 20), same_extent(4, 4), same_extent(4, 4)]
    assert np.abs(resample(stripes, grids, order=1)).min() > 0.3  # aliased: the stripes come back at a third
    assert np.abs(resample(stripes, grids, order=1, antialias=True)).max() < 0.1  # a tenth of the aliased stripes
    flat = np.full((60, 4, 4), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resample(flat, grids, order=1, antialias=True), 0.25, atol=1e-6)


def test_label_round_trip_keeps_labels_and_shape() -> None:
    label = np.zeros((23, 41, 37), dtype=np.int64)
    label[5:15, 10:30, 8:30] = 2
    label[8:12, 15:25, 12:20] = 1
    shape = same_extent_shape(label.shape, (3.0, 0.8, 1.2), (1.5, 1.6, 1.2))
    assert shape == (46, 20, 37)
    small = resample_to_shape(label, shape, order=0)
    assert small.dtype == np.int64 and set(np.unique(small).tolist()) == {0, 1, 2}
    back = resample_to_shape(small, label.shape, order=0)
    assert back.shape == label.shape and (back == label).mean() > 0.9
    assert resample_to_shape(label, label.shape, order=0) is label


def test_large_volumes_are_done_in_slabs_with_the_same_result() -> None:
    from scipy import ndimage as ndi

    image = smooth_image((40, 9, 7))
    grids = [same_extent(40, 37), same_extent(9, 5), same_extent(7, 11)]
    whole = ndi.map_coordinates(image, np.meshgrid(*[g.coords for g in grids], indexing="ij"), order=1, mode="nearest")
    assert np.array_equal(resample(image, grids, order=1), whole)


def test_bad_arguments() -> None:
    grids = [same_extent(4, 2)] * 3
    with pytest.raises(ValueError, match="order must be 0"):
        resample(np.zeros((4, 4, 4)), grids, order=3)
    with pytest.raises(ValueError, match="3-D volume"):
        resample(np.zeros((4, 4)), grids, order=1)
