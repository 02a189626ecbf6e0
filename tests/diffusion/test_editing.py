"""Label-map edits and the edit region in mm, on anisotropic and oblique grids (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.nifti import read_stored, save_stored
from diffusion.editing.geometry import distance_mm, world_coordinates, world_to_index
from diffusion.editing.labels import grow, insert_ellipsoid, parse_edit, replace, shrink
from diffusion.editing.region import crop_box, edit_region, label_difference, latent_mask


def oblique_affine(voxel_ijk: tuple[float, float, float] = (0.8, 1.3, 3.0)) -> np.ndarray:
    """A rotated (oblique, orthogonal) anisotropic grid: rotation about two axes, then voxel sizes, then a shift."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(voxel_ijk)
    aff[:3, 3] = (-10.0, 5.0, 30.0)
    return aff


def brute_distance(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World distance from each voxel centre to the nearest mask voxel centre, by brute force."""
    xyz = world_coordinates(mask.shape, affine).reshape(-1, 3)
    pts = xyz[mask.reshape(-1)]
    d = np.sqrt(((xyz[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(1)
    return d.reshape(mask.shape)


def test_distance_and_margin_are_world_millimetres_on_an_oblique_anisotropic_grid() -> None:
    aff = oblique_affine()
    mask = np.zeros((8, 12, 10), dtype=bool)
    mask[4, 5, 4] = True
    mask[3, 6, 5] = True
    np.testing.assert_allclose(distance_mm(mask, aff), brute_distance(mask, aff), atol=1e-9)
    region = edit_region(mask, 3.7, aff)  # not a distance that occurs on this grid: no ties
    truth = brute_distance(mask, aff)
    assert np.array_equal(region.mask, truth < 3.7)  # alpha > 0 exactly inside the margin
    assert np.array_equal(region.core, truth <= 1.85 + 1e-9)
    assert region.band.any() and not region.band[mask].any()
    assert region.alpha[mask].min() == 1.0 and region.alpha[truth >= 3.7].max() == 0.0
    # on this grid 3.7 mm is about 1 voxel along K (3 mm) but 4 along I (0.8 mm): a box in mm, not voxels
    extent = [np.flatnonzero(region.mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    assert len(extent[0]) < len(extent[1])


def test_zero_margin_regenerates_exactly_the_changed_voxels() -> None:
    aff = oblique_affine()
    changed = np.zeros((6, 6, 6), dtype=bool)
    changed[2:4, 1, 3] = True
    region = edit_region(changed, 0.0, aff)
    assert np.array_equal(region.mask, changed) and not region.band.any()
    with pytest.raises(ValueError):
        edit_region(changed, -1.0, aff)


def test_grow_and_shrink_by_mm_match_brute_force_distances() -> None:
    aff = oblique_affine()
    lab = np.zeros((10, 12, 12), dtype=np.int64)
    lab[3:7, 4:8, 4:8] = 2
    lab[:, :2] = 1
    grown = grow(lab, 2, 2.5, aff)
    truth = brute_distance(lab == 2, aff) <= 2.5
    assert np.array_equal(grown == 2, truth)
    shrunk = shrink(lab, 2, 1.0, aff)
    keep = brute_distance(lab != 2, aff) > 1.0
    assert np.array_equal(shrunk == 2, (lab == 2) & keep)
    assert set(np.unique(shrunk[(lab == 2) & ~keep])) <= {0, 1}  # took the nearest other class
    # within a region: only there
    within = np.zeros_like(lab, dtype=bool)
    within[:5] = True
    part = grow(lab, 2, 2.5, aff, within)
    assert np.array_equal(part[5:], lab[5:]) and np.array_equal(part[:5], grown[:5])


def test_insert_sphere_at_a_world_coordinate_clipped_to_its_parent() -> None:
    aff = oblique_affine()
    lab = np.zeros((16, 16, 16), dtype=np.int64)
    lab[:, :8] = 3  # the parent structure: half the volume
    centre_idx = np.array([8.0, 8.0, 8.0])  # (d, h, w)
    centre = aff[:3, :3] @ centre_idx[[1, 2, 0]] + aff[:3, 3]
    np.testing.assert_allclose(world_to_index(centre, aff), centre_idx, atol=1e-9)
    out = insert_ellipsoid(lab, 4, centre, [5.0], aff, parent=[3])
    dist = np.linalg.norm(world_coordinates(lab.shape, aff) - centre, axis=-1)
    assert np.array_equal(out == 4, (dist <= 5.0) & (lab == 3))
    assert (out == 4).any() and not (out[:, 8:] == 4).any()
    ell = insert_ellipsoid(lab, 4, centre, [2.0, 6.0, 3.0], aff)
    rel = (world_coordinates(lab.shape, aff) - centre) / np.array([2.0, 6.0, 3.0])
    assert np.array_equal(ell == 4, (rel**2).sum(-1) <= 1)


def test_replace_inside_a_region_and_label_difference() -> None:
    lab = np.zeros((4, 4, 4), dtype=np.int64)
    lab[1:3] = 2
    within = np.zeros_like(lab, dtype=bool)
    within[2:] = True
    out = replace(lab, 2, 1, within)
    assert (out[1] == 2).all() and (out[2] == 1).all()
    assert np.array_equal(label_difference(lab, out), (lab == 2) & within)


def test_parse_edit_accepts_the_documented_forms_and_refuses_the_rest() -> None:
    e = parse_edit("insert", "4:1.5,-2,30:5:2,3", label_nc=5)
    assert e.centre == (1.5, -2.0, 30.0) and e.radii == (5.0,) and e.parent == (2, 3)
    assert parse_edit("grow", "2:2", 5).mm == 2.0 and parse_edit("replace", "1:2", 5).b == 2
    for kind, text in [("grow", "7:2"), ("grow", "2:-1"), ("grow", "2"), ("shrink", "x:1"), ("replace", "1:9"),
                       ("insert", "1:0,0:5"), ("insert", "1:0,0,0:0"), ("insert", "1:0,0,0:5:9"),
                       ("grow", "2:nan")]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_edit(kind, text, label_nc=5)


def test_latent_mask_and_crop_box() -> None:
    mask = np.zeros((16, 16, 64), dtype=bool)
    mask[5, 6, 3] = True
    lm = latent_mask(mask, (4, 4, 4))
    assert lm.shape == (4, 4, 16) and lm.sum() == 1 and lm[1, 1, 0]
    box = crop_box(mask, (2, 2, 2), (4, 4, 4), (16, 16, 16))
    assert [(s.start, s.stop) for s in box] == [(0, 16), (0, 16), (0, 16)]
    box = crop_box(mask, (0, 0, 0), (4, 4, 4), (8, 8, 8))
    assert all((s.stop - s.start) >= 8 and s.start % 4 == 0 for s in box)
    assert box[0].start <= 5 < box[0].stop and box[2].start <= 3 < box[2].stop
    with pytest.raises(ValueError):
        crop_box(np.zeros_like(mask), (0, 0, 0), (4, 4, 4), (8, 8, 8))


@pytest.mark.parametrize("dtype,slope,inter", [(np.int16, 1.0, -1024.0), (np.int16, 0.5, 3.0), (np.float32, 1, 0)])
def test_stored_volume_round_trips_bit_for_bit(tmp_path, dtype, slope, inter) -> None:  # noqa: ANN001
    import nibabel as nib

    rng = np.random.default_rng(0)
    raw = rng.integers(-500, 2000, size=(5, 6, 7)).astype(dtype)
    img = nib.Nifti1Image(raw, oblique_affine())
    img.header.set_data_dtype(dtype)
    src = tmp_path / "in.nii.gz"
    nib.save(img, src)
    if slope != 1 or inter != 0:  # nibabel recomputes scaling on save: write the scaled file with our writer
        from dataset.nifti import StoredVolume, ijk_to_dhw

        save_stored(src, ijk_to_dhw(raw), StoredVolume(ijk_to_dhw(raw), slope, inter, oblique_affine()), True)
    vol = read_stored(src)
    assert vol.stored.dtype == dtype and (vol.slope, vol.inter) == (slope, inter)
    save_stored(tmp_path / "out.nii.gz", vol.stored, vol)
    back = nib.load(tmp_path / "out.nii.gz")
    assert back.get_data_dtype() == dtype
    assert np.array_equal(np.asarray(back.dataobj.get_unscaled()), raw)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(nib.load(src).dataobj))
    np.testing.assert_allclose(back.affine, oblique_affine())
    with pytest.raises(FileExistsError):
        save_stored(tmp_path / "out.nii.gz", vol.stored, vol)


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("rflow", "rflow")])
def test_step_hook_sees_every_step_and_the_clean_end(objective: str, sampler: str) -> None:
    import torch

    from diffusion.editing.inpaint import KnownLatent
    from diffusion.schedulers import NoiseSchedule

    sched = NoiseSchedule(objective, 20, prediction_type="v_prediction" if objective == "rflow" else "epsilon")
    steps = None if sampler == "ddpm" else 5
    noise = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x

    seen: list[int] = []

    def identity(x: torch.Tensor, t: int) -> torch.Tensor:
        seen.append(t)
        return x

    plain = sched.sample(denoise, noise, sampler, steps, generator=torch.Generator().manual_seed(1))
    hooked = sched.sample(
        denoise, noise, sampler, steps, generator=torch.Generator().manual_seed(1), step_hook=identity
    )
    assert torch.equal(plain, hooked)  # a hook that changes nothing changes nothing
    assert seen == [t for t, _ in sched.inference_timesteps(sampler, steps, 64)] + [-1]
    # RePaint: outside the free mask the result is the known latent exactly, inside it is sampled
    z0 = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    free = torch.zeros(4, 4, 4, dtype=torch.bool)
    free[1:3, 1:3, 1:3] = True
    known = KnownLatent(z0, free, sched, torch.Generator().manual_seed(3))
    out = sched.sample(denoise, noise, sampler, steps, generator=torch.Generator().manual_seed(1), step_hook=known)
    assert torch.equal(out[:, :, ~free], z0[:, :, ~free]) and not torch.equal(out[:, :, free], z0[:, :, free])
    assert known.calls == len(seen)


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("rflow", "rflow")])
def test_resampling_jumps_rerun_each_block_and_keep_the_known_latent(objective: str, sampler: str) -> None:
    import torch

    from diffusion.editing.inpaint import KnownLatent
    from diffusion.schedulers import NoiseSchedule

    sched = NoiseSchedule(objective, 20, prediction_type="v_prediction" if objective == "rflow" else "epsilon")
    steps = None if sampler == "ddpm" else 5
    noise = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ts = [t for t, _ in sched.inference_timesteps(sampler, steps, 64)]

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x

    def run(resample: tuple[int, int] | None, hook=None) -> torch.Tensor:  # noqa: ANN001
        gen = torch.Generator().manual_seed(1)
        return sched.sample(denoise, noise, sampler, steps, generator=gen, step_hook=hook, resample=resample)

    assert torch.equal(run(None), run((2, 1)))  # one pass per block: the plain sampler, bit for bit
    seen: list[int] = []

    def record(x: torch.Tensor, t: int) -> torch.Tensor:
        seen.append(t)
        return x

    out = run((2, 3), record)
    expected = [t for i in range(0, len(ts), 2) for _ in range(3) for t in ts[i : i + 2]] + [-1]
    assert seen == expected  # each block of 2 steps three times, then the clean end: the cost is 3x
    assert not torch.equal(out, run(None))
    z0 = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    free = torch.zeros(4, 4, 4, dtype=torch.bool)
    free[1:3, 1:3, 1:3] = True
    known = KnownLatent(z0, free, sched, torch.Generator().manual_seed(3))
    out = run((2, 3), known)
    assert torch.equal(out[:, :, ~free], z0[:, :, ~free]) and not torch.equal(out[:, :, free], z0[:, :, free])
    assert known.calls == len(expected)
    with pytest.raises(ValueError, match="jump length"):
        run((0, 2))


@pytest.mark.parametrize("objective", ["ddpm", "rflow"])
def test_renoise_draws_the_forward_process_between_two_levels(objective: str) -> None:
    """x at level s, re-noised to t, has the moments of add_noise(x0, ., t): known answers on a constant x0."""
    import torch

    from diffusion.schedulers import NoiseSchedule

    sched = NoiseSchedule(objective, 100, prediction_type="v_prediction" if objective == "rflow" else "epsilon")
    x0 = torch.full((1, 1, 64, 64, 64), 2.0)
    g = torch.Generator().manual_seed(0)
    clean = -1 if objective == "ddpm" else 0
    for s, t in ((30, 70), (clean, 50), (40, 40), (60, 99)):
        x_s = x0 if s == clean else sched.add_noise(x0, torch.randn(x0.shape, generator=g), torch.tensor([s]))
        x_t = sched.renoise(x_s, s, t, g)
        want = sched.add_noise(x0, torch.randn(x0.shape, generator=g), torch.tensor([t]))
        assert float(x_t.mean()) == pytest.approx(float(want.mean()), abs=0.01)
        assert float(x_t.std()) == pytest.approx(float(want.std()), abs=0.01)
    with pytest.raises(ValueError, match="noisier"):
        sched.renoise(x0, 70, 30)
