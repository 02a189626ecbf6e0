"""``scripts/edit.py`` and ``diffusion.editing.inpaint`` on a tiny random-weight stage-2 checkpoint (SPADE decoder,
latent factor 2, 8x16x16 blocks, 3 classes, fixed latent statistics): editing is plumbing and geometry, which
training does not change, and the checkpoint is built in a second instead of trained.

The scan is stored as int16 with a scale (value = stored * 0.001), on an oblique anisotropic grid, so "bit for bit"
means the stored integers and the scaling of the file, not a float round trip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dataset.nifti import StoredVolume, dhw_to_ijk, ijk_to_dhw, save_stored
from tests.scripts.conftest import nested_labels, oblique_affine, write_nifti

FAST = ["--device", "cpu", "--sampler", "ddim", "--steps", "2"]
EXIT_ERROR = 2
AFFINE = oblique_affine((1.5, 1.5, 2.0))  # the training voxel size (D, H, W) = (2.0, 1.5, 1.5) mm, rotated


LABEL_NC = 3


@dataclass(frozen=True)
class TinyModel:
    diffusion: Path
    block: tuple[int, int, int]


def _tiny_checkpoint(d: Path, inpaint_inputs: bool) -> TinyModel:
    """A random-weight stage-2 checkpoint in the format ``train_diffusion`` writes (hyperparameters + state dict)."""
    from diffusion.module import LatentDiffusionModule
    from tests.diffusion.helpers import save_tiny_vqgan

    torch.manual_seed(0)
    block = (8, 16, 16)
    info = {
        "name": "synthetic",
        "label_nc": LABEL_NC,
        "class_names": ["background", "outer", "inner"],
        "voxel_size": [2.0, 1.5, 1.5],
        "intensity": {"kind": "none", "invertible": True},
        "block_size": list(block),
    }
    model = LatentDiffusionModule(
        label_nc=LABEL_NC,
        first_stage_ckpt=str(save_tiny_vqgan(d / "vq.ckpt", decoder="spade")),
        block_size=block,
        data_info=info,
        num_train_timesteps=50,
        sample_steps=3,
        guidance=2.5,
        denoiser_kwargs={
            "dim": 8,
            "dim_mults": [1, 2],
            "attn_heads": 2,
            "attn_dim_head": 8,
            "label_channels": 4,
            "label_hidden": [4],
            "spade_hidden": 8,
        },
        inpaint_inputs=inpaint_inputs,
    )
    model.latent_norm.fitted.fill_(True)  # identity statistics: nothing to train for plumbing
    path = d / "stage2.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return TinyModel(path, block)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The plain model."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("edit_ckpt"), False)


@pytest.fixture(scope="module")
def tiny_inpaint_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The same model built with ``inpaint_inputs`` (masked real latent and region mask as denoiser inputs)."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("edit_inpaint_ckpt"), True)


def write_scan(path: Path, shape_ijk: tuple[int, int, int], affine: np.ndarray = AFFINE) -> Path:
    """A textured int16 scan in [-1, 1] after its scaling (slope 0.001), written with the scaling kept."""
    rng = np.random.default_rng(0)
    lab = nested_labels(shape_ijk, LABEL_NC).astype(np.float64)
    raw = np.clip(np.rint((lab / 2.0 - 0.5) * 1500 + rng.normal(0, 80, shape_ijk)), -1000, 1000).astype(np.int16)
    dhw = ijk_to_dhw(raw)
    return save_stored(path, dhw, StoredVolume(dhw, 0.001, 0.0, affine))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edit_inputs")
    shape = (18, 20, 24)  # I, J, K: (D, H, W) = (24, 18, 20), not multiples of anything
    labels = nested_labels(shape, LABEL_NC)
    edited = labels.copy()
    edited[8:11, 9:12, 4:7] = 2  # a small block of class 3 near one end of the depth axis
    region = np.zeros(shape, dtype=np.uint8)
    region[2:9, 9:11, 10:14] = 1  # from the background through class 1 into class 2
    return {
        "image": write_scan(d / "scan.nii.gz", shape),
        "labels": write_nifti(d / "labels.nii.gz", labels, AFFINE),
        "edited": write_nifti(d / "edited.nii.gz", edited, AFFINE),
        "region": write_nifti(d / "region.nii.gz", region, AFFINE),
        "other_grid": write_nifti(d / "other_grid.nii.gz", labels, oblique_affine((1.5, 1.5, 2.2))),
        "other_shape": write_nifti(d / "other_shape.nii.gz", labels[:, :, :-1], AFFINE),
        "out_of_range": write_nifti(d / "out_of_range.nii.gz", np.where(edited == 2, 9, edited), AFFINE),
        "empty_region": write_nifti(d / "empty_region.nii.gz", np.zeros(shape, dtype=np.uint8), AFFINE),
    }


def cli(model: TinyModel, inputs: dict[str, Path], out: Path, *extra: str) -> int:
    from scripts.edit import main

    argv = [
        "--ckpt",
        str(model.diffusion),
        "--image",
        str(inputs["image"]),
        "--labels",
        str(inputs["labels"]),
        "--out",
        str(out),
        *FAST,
        *extra,
    ]
    return main(argv)


@pytest.fixture(scope="module")
def edit_run(tiny_model: TinyModel, inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edit_out") / "run"
    assert cli(tiny_model, inputs, out, "--edited", str(inputs["edited"]), "--margin-mm", "3.1", "--png") == 0
    return out


def test_outside_the_region_the_file_is_bit_for_bit_the_input(edit_run: Path, inputs: dict[str, Path]) -> None:
    src, out = nib.load(inputs["image"]), nib.load(edit_run / "edited.nii.gz")
    assert out.get_data_dtype() == src.get_data_dtype() == np.int16
    assert (out.dataobj.slope, out.dataobj.inter) == (src.dataobj.slope, src.dataobj.inter)
    assert src.dataobj.slope == pytest.approx(0.001) and src.dataobj.inter == 0.0
    np.testing.assert_array_equal(out.affine, src.affine)
    raw_in, raw_out = np.asarray(src.dataobj.get_unscaled()), np.asarray(out.dataobj.get_unscaled())
    region = np.asarray(nib.load(edit_run / "region.nii.gz").dataobj)
    assert set(np.unique(region)) == {0, 1, 2}  # kept, regenerated, band
    assert np.array_equal(raw_out[region == 0], raw_in[region == 0])
    assert (raw_out[region == 1] != raw_in[region == 1]).any()
    # the region is the label difference grown by 3.1 mm in world distance (3 mm would tie with 2 x 1.5 mm)
    from diffusion.editing.geometry import world_coordinates

    lab_in = np.asarray(nib.load(inputs["labels"]).dataobj)
    lab_ed = np.asarray(nib.load(inputs["edited"]).dataobj)
    xyz = world_coordinates(ijk_to_dhw(lab_in).shape, AFFINE)
    changed = ijk_to_dhw(lab_in != lab_ed)
    dist = np.min(np.linalg.norm(xyz[..., None, :] - xyz[changed][None, None, None], axis=-1), axis=-1)
    np.testing.assert_array_equal(ijk_to_dhw(region) > 0, dist < 3.1)
    np.testing.assert_array_equal(ijk_to_dhw(region) == 1, dist <= 1.55)


def test_an_inpaint_inputs_checkpoint_sees_the_real_latent_and_keeps_the_file(
    tiny_inpaint_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``inpaint_inputs`` the denoiser gets (masked real latent, mask) at every step; preservation stays exact."""
    from diffusion.denoiser_base import Denoiser

    seen: list[torch.Tensor] = []
    forward = Denoiser.forward

    def recording(self: Denoiser, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(x.detach().clone())
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "forward", recording)
    out = tmp_path / "run"
    assert cli(tiny_inpaint_model, inputs, out, "--edited", str(inputs["edited"]), "--margin-mm", "3.1") == 0
    per_step = len(seen) // 2  # --steps 2: the crop's windows at each step
    assert per_step >= 1 and len(seen) == 2 * per_step
    c = 4  # the tiny VQ-GAN's latent channels
    assert all(x.shape[1] == 2 * c + 1 for x in seen)
    mask = torch.cat([x[:, 2 * c] for x in seen[:per_step]])
    known = torch.cat([x[:, c : 2 * c] for x in seen[:per_step]])
    assert set(mask.unique().tolist()) == {0.0, 1.0}  # a region, and context around it
    assert bool((known.movedim(1, -1)[mask > 0] == 0).all()) and bool(known.movedim(1, -1)[mask == 0].abs().sum() > 0)
    for a, b in zip(seen[:per_step], seen[per_step:]):  # the same context at every step
        torch.testing.assert_close(a[:, c:], b[:, c:])
    rec = json.loads((out / "generation.json").read_text())
    assert rec["inpaint_inputs"] is True
    src, res = nib.load(inputs["image"]), nib.load(out / "edited.nii.gz")
    raw_in, raw_out = np.asarray(src.dataobj.get_unscaled()), np.asarray(res.dataobj.get_unscaled())
    region = np.asarray(nib.load(out / "region.nii.gz").dataobj)
    assert np.array_equal(raw_out[region == 0], raw_in[region == 0])
    assert (raw_out[region == 1] != raw_in[region == 1]).any()


def test_resampling_jumps_cost_what_they_say_and_keep_the_file(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--resample 3 --jump-length 1``: every step three times (denoiser calls counted), preservation exact."""
    from diffusion.denoiser_base import Denoiser

    calls = {"n": 0}
    forward = Denoiser.forward

    def counting(self: Denoiser, *args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "forward", counting)
    edit = ("--edited", str(inputs["edited"]), "--margin-mm", "3.1")
    assert cli(tiny_model, inputs, tmp_path / "plain", *edit) == 0
    plain = calls["n"]
    calls["n"] = 0
    assert cli(tiny_model, inputs, tmp_path / "jumps", *edit, "--resample", "3", "--jump-length", "1") == 0
    assert plain > 0 and calls["n"] == 3 * plain
    rec = json.loads((tmp_path / "jumps" / "generation.json").read_text())
    assert rec["resample"] == {"jump_length": 1, "count": 3} and rec["sampler_steps_run"] == 3 * 2
    assert json.loads((tmp_path / "plain" / "generation.json").read_text())["resample"] is None
    src, res = nib.load(inputs["image"]), nib.load(tmp_path / "jumps" / "edited.nii.gz")
    raw_in, raw_out = np.asarray(src.dataobj.get_unscaled()), np.asarray(res.dataobj.get_unscaled())
    region = np.asarray(nib.load(tmp_path / "jumps" / "region.nii.gz").dataobj)
    assert np.array_equal(raw_out[region == 0], raw_in[region == 0])
    plain_out = np.asarray(nib.load(tmp_path / "plain" / "edited.nii.gz").dataobj.get_unscaled())
    assert not np.array_equal(raw_out[region == 1], plain_out[region == 1])  # the jumps changed the sample


def test_run_record_montage_and_overwrite(tiny_model: TinyModel, edit_run: Path, inputs: dict[str, Path]) -> None:
    rec = json.loads((edit_run / "generation.json").read_text())
    assert rec["producer"] == "med-lsdm" and rec["command"] == "edit"
    assert len(rec["checkpoint"]["sha256"]) == 64 and rec["seed"] == 0 and rec["steps"] == 2
    changed = np.asarray(nib.load(inputs["labels"]).dataobj) != np.asarray(nib.load(inputs["edited"]).dataobj)
    assert rec["region"]["changed_voxels"] == int(changed.sum()) > 0 and rec["region"]["margin_mm"] == 3.1
    assert rec["windows_sampled"] <= rec["windows_total"]
    assert sorted(rec["outputs"]) == ["edited.nii.gz", "montage.png", "region.nii.gz"]
    assert sorted(os.listdir(edit_run)) == ["edited.nii.gz", "generation.json", "montage.png", "region.nii.gz"]

    def voxels() -> np.ndarray:
        return np.asarray(nib.load(edit_run / "edited.nii.gz").dataobj.get_unscaled())

    before = voxels()
    assert cli(tiny_model, inputs, edit_run, "--edited", str(inputs["edited"])) == EXIT_ERROR  # no --overwrite
    assert np.array_equal(voxels(), before)
    # --overwrite without --png: the old montage (recorded by the previous run) is removed
    rerun = ["--edited", str(inputs["edited"]), "--margin-mm", "3.1", "--overwrite"]
    assert cli(tiny_model, inputs, edit_run, *rerun) == 0
    assert np.array_equal(voxels(), before)  # same seed, same output
    assert sorted(os.listdir(edit_run)) == ["edited.nii.gz", "generation.json", "region.nii.gz"]


def test_label_edit_options_write_the_edited_map(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "grow"
    assert cli(tiny_model, inputs, out, "--grow", "2:2", "--replace", "1:2", "--within", str(inputs["region"])) == 0
    lab_in = ijk_to_dhw(np.asarray(nib.load(inputs["labels"]).dataobj))
    lab_out = ijk_to_dhw(np.asarray(nib.load(out / "edited_labels.nii.gz").dataobj))
    within = ijk_to_dhw(np.asarray(nib.load(inputs["region"]).dataobj)) > 0
    assert np.array_equal(lab_out[~within], lab_in[~within]) and not np.array_equal(lab_out, lab_in)
    # --region alone regenerates it with the labels unchanged
    out2 = tmp_path / "region"
    assert cli(tiny_model, inputs, out2, "--region", str(inputs["region"]), "--margin-mm", "0") == 0
    region = ijk_to_dhw(np.asarray(nib.load(out2 / "region.nii.gz").dataobj))
    assert np.array_equal(region > 0, within)


def test_only_the_windows_around_the_region_are_sampled(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long volume (96 slices = 48 latent slices, windows of 4): the edit near one end samples a few windows."""
    import diffusion.sampling as sampling
    from diffusion.editing.inpaint import edit_scan
    from diffusion.editing.region import edit_region
    from diffusion.generation.pipeline import load_model

    model = load_model(tiny_model.diffusion, torch.device("cpu"))
    calls: list[tuple[int, ...]] = []
    net = model.ema.module
    original_forward = net.forward

    def counting(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(x.shape[2:]))
        return original_forward(x, *args, **kwargs)

    monkeypatch.setattr(net, "forward", counting)
    shape_dhw = (96, 16, 16)
    labels = ijk_to_dhw(nested_labels((16, 16, 96), LABEL_NC)).astype(np.int64)
    image = (labels / 2.0 - 0.5).astype(np.float32)
    edited = labels.copy()
    edited[4:8, 6:10, 6:10] = 2
    region = edit_region(labels != edited, 2.0, AFFINE)
    settings = model.sampler_defaults.resolve("ddim", 3, None)
    res = edit_scan(model, image, edited, region, settings, 0, tiny_model.block)
    assert res.windows_total == len(sampling.windows((48, 8, 8), (4, 8, 8), 0.5)) == 23
    assert res.windows_sampled <= 4
    assert len(calls) == 3 * res.windows_sampled  # 3 steps x the crop's windows, nothing else denoised
    assert all(c[0] == 4 for c in calls) and res.crop[0].stop <= 16
    assert np.isnan(res.generated[40:]).all()  # the far end is never decoded
    assert np.array_equal(res.image[~region.mask], image[~region.mask])
    assert res.image.shape == shape_dhw


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusion.editing.inpaint as inpaint

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampling started although the input should have been refused first")

    monkeypatch.setattr(inpaint, "edit_scan", refuse)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--edited", "{other_grid}"], "affine differs"),
        (["--edited", "{other_shape}"], "shape"),
        (["--edited", "{out_of_range}"], "9"),
        (["--edited", "{labels}"], "empty edit"),
        (["--region", "{empty_region}"], "region is empty"),
        (["--region", "{other_grid}"], "affine differs"),
        (["--insert", "2:1000,1000,1000:5"], "empty edit"),  # a sphere outside the volume changes nothing
        (["--grow", "7:2"], "class 7"),
        (["--grow", "2:2", "--edited", "{edited}"], "not both"),
        ([], "nothing to edit"),
        (["--edited", "{edited}", "--margin-mm", "-1"], "margin"),
        (["--edited", "{edited}", "--margin-mm", "nan"], "margin"),
        (["--edited", "{edited}", "--guidance", "inf"], "guidance"),
        (["--edited", "{edited}", "--steps", "0"], "steps"),
        (["--edited", "{edited}", "--overlap", "1"], "overlap"),
        (["--grow", "2:nan"], "not finite"),
        (["--edited", "{edited}", "--device", "cuda:99"], "cuda:99"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_sampling(
    tiny_model: TinyModel,
    inputs: dict[str, Path],
    tmp_path: Path,
    no_sampling: None,
    extra: list[str],
    message: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in extra]
    assert cli(tiny_model, inputs, out, *args) == EXIT_ERROR
    errors = _errors(caplog, capsys)
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()  # nothing written, not even the folder


def _errors(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines of a run: logged (``run_cli``) or argparse's one line on stderr (a bad option value)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "error:" in line] + [
        r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    ]


def test_labels_on_another_grid_than_the_image_are_refused(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, no_sampling: None
) -> None:
    from scripts.edit import main

    argv = [
        "--ckpt",
        str(tiny_model.diffusion),
        "--image",
        str(inputs["image"]),
        "--labels",
        str(inputs["other_grid"]),
        "--edited",
        str(inputs["edited"]),
        "--out",
        str(tmp_path / "o"),
        *FAST,
    ]
    assert main(argv) == EXIT_ERROR and not (tmp_path / "o").exists()


def test_a_scan_in_units_the_model_cannot_read_is_refused(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, no_sampling: None
) -> None:
    from scripts.edit import main

    raw = ijk_to_dhw(np.asarray(nib.load(inputs["image"]).dataobj.get_unscaled()))
    hot = save_stored(tmp_path / "hu.nii.gz", raw, StoredVolume(raw, 1.0, 0.0, AFFINE))  # +-1000: not in [-1, 1]
    argv = ["--ckpt", str(tiny_model.diffusion), "--image", str(hot), "--labels", str(inputs["labels"]),
            "--edited", str(inputs["edited"]), "--out", str(tmp_path / "o"), *FAST]  # fmt: skip
    assert main(argv) == EXIT_ERROR and not (tmp_path / "o").exists()


def test_stored_writer_keeps_the_scaling_of_an_edit(tmp_path: Path) -> None:
    from diffusion.editing.inpaint import composite_stored

    raw = np.arange(-50, 70, dtype=np.int16).reshape(4, 5, 6)
    vol = StoredVolume(raw, 2.0, -1024.0, AFFINE)
    mask = np.zeros(raw.shape, dtype=bool)
    mask[1, 2, 3] = True
    values = vol.values.astype(np.float64)
    values[mask] = 100.0
    values[~mask] = 1e9  # ignored outside the mask
    out = composite_stored(vol, values.astype(np.float32), mask)
    assert out.dtype == np.int16 and out[1, 2, 3] == 562 and np.array_equal(out[~mask], raw[~mask])
    save_stored(tmp_path / "x.nii.gz", out, vol)
    back = nib.load(tmp_path / "x.nii.gz")
    assert np.asarray(back.dataobj)[dhw_to_ijk(mask)][0] == 100.0


def test_edit_metrics_report_on_held_out_scans(tiny_model: TinyModel, tmp_path: Path) -> None:
    """evaluation/edit_metrics.py end to end: spheres and a structure hidden, three methods, exact preservation."""
    from evaluation.edit_metrics import METHODS, main

    images, labels = tmp_path / "real", tmp_path / "real" / "labels"
    for i in range(2):
        lab = nested_labels((16, 18, 20), LABEL_NC)
        rng = np.random.default_rng(i)
        img = np.clip(lab / 2.0 - 0.5 + rng.normal(0, 0.05, lab.shape), -1, 1).astype(np.float32)
        write_nifti(images / f"s{i}.nii.gz", img, AFFINE)
        write_nifti(labels / f"s{i}.nii.gz", lab, AFFINE)
    out = tmp_path / "edit.json"
    argv = ["--ckpt", str(tiny_model.diffusion), "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--radii-mm", "3", "--structure", "2", "--seeds", "0", "--steps", "2", "--data-range", "-1", "1",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    kinds = set(report["table"])
    assert kinds == {"sphere r=3 mm", "class 2 grown 2 mm"}
    assert report["preservation"]["max_abs_outside"] == 0.0
    for row in report["table"].values():
        assert row["n"] == 2 and all(row[m]["ssim"]["n"] == 2 for m in METHODS)
    case = report["cases"][0]
    assert case["windows_sampled"] <= case["windows_total"] and case["seam_truth"] is not None
    md = out.with_suffix(".md").read_text()
    assert "| sphere r=3 mm | 2 | edit |" in md and "smoothed" in md and "pasted" in md
    assert main(argv) == EXIT_ERROR  # the report exists: --overwrite needed


def test_edit_metrics_scores_several_checkpoints_in_one_table(
    tiny_model: TinyModel, tiny_inpaint_model: TinyModel, tmp_path: Path
) -> None:
    """``--ckpt NAME=PATH`` repeated: each checkpoint's edit and pasted rows on the same regions, one smoothed row."""
    from evaluation.edit_metrics import main

    images, labels = tmp_path / "real", tmp_path / "real" / "labels"
    lab = nested_labels((16, 18, 20), LABEL_NC)
    img = np.clip(lab / 2.0 - 0.5 + np.random.default_rng(0).normal(0, 0.05, lab.shape), -1, 1).astype(np.float32)
    write_nifti(images / "s0.nii.gz", img, AFFINE)
    write_nifti(labels / "s0.nii.gz", lab, AFFINE)
    out = tmp_path / "edit.json"
    common = ["--images", str(images), "--labels", str(labels), "--radii-mm", "3", "--seeds", "0", "--steps", "2",
              "--data-range", "-1", "1", "--device", "cpu"]  # fmt: skip
    argv = ["--ckpt", f"plain={tiny_model.diffusion}", "--ckpt", f"inpaint={tiny_inpaint_model.diffusion}",
            "--out", str(out), "--resample", "2", "--jump-length", "1", *common]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["resample"] == {"jump_length": 1, "count": 2}
    methods = ["edit:plain", "pasted:plain", "edit:inpaint", "pasted:inpaint", "smoothed"]
    assert report["methods"] == methods
    assert report["checkpoints"] == {"plain": str(tiny_model.diffusion), "inpaint": str(tiny_inpaint_model.diffusion)}
    assert report["preservation"]["max_abs_outside"] == 0.0
    (row,) = report["table"].values()
    assert all(row[m]["ssim"]["n"] == 1 for m in methods)
    case = report["cases"][0]
    assert case["edit:plain"] != case["edit:inpaint"]  # two different models really ran
    md = out.with_suffix(".md").read_text()
    assert all(f"| sphere r=3 mm | 1 | {m} |" in md for m in methods)
    # several checkpoints need names, each its own; refused in one line before any sampling
    for bad in (["--ckpt", str(tiny_model.diffusion), "--ckpt", str(tiny_inpaint_model.diffusion)],
                ["--ckpt", f"a={tiny_model.diffusion}", "--ckpt", f"a={tiny_inpaint_model.diffusion}"]):  # fmt: skip
        assert main([*bad, "--out", str(tmp_path / "bad.json"), *common]) == EXIT_ERROR
    assert not (tmp_path / "bad.json").exists()


# ------------------------------------------------------------------ the output-folder contract (issue 20)
def test_out_that_is_a_link_is_refused_and_nothing_is_written_through_it(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, no_sampling: None
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "out"
    out.symlink_to(target, target_is_directory=True)
    assert cli(tiny_model, inputs, out, "--edited", str(inputs["edited"])) == EXIT_ERROR
    assert list(target.iterdir()) == []


def test_overwrite_replaces_only_the_recorded_set(
    tiny_model: TinyModel, inputs: dict[str, Path], edit_run: Path, tmp_path: Path, no_sampling: None
) -> None:
    """An output entry that is a link to a user file, or a same-named file no record lists, is never replaced."""
    # a linked entry: its target (a user file) is neither replaced nor deleted
    out = tmp_path / "linked"
    out.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (out / "edited.nii.gz").symlink_to(notes)
    assert cli(tiny_model, inputs, out, "--edited", str(inputs["edited"]), "--overwrite") == EXIT_ERROR
    assert notes.read_text() == "mine" and (out / "edited.nii.gz").is_symlink()
    # a same-named file that the folder's record does not list (the user's own region mask)
    out2 = tmp_path / "unrecorded"
    out2.mkdir()
    (out2 / "region.nii.gz").write_bytes(b"user data")
    assert cli(tiny_model, inputs, out2, "--edited", str(inputs["edited"]), "--overwrite") == EXIT_ERROR
    assert (out2 / "region.nii.gz").read_bytes() == b"user data"
    # a folder holding another command's record (generate.py's generation.json) is not edit's to replace
    out3 = tmp_path / "generated"
    out3.mkdir()
    (out3 / "generation.json").write_text(json.dumps({"producer": "med-lsdm", "command": "generate", "outputs": []}))
    assert cli(tiny_model, inputs, out3, "--edited", str(inputs["edited"]), "--overwrite") == EXIT_ERROR
    # a recorded entry that became a link is not deleted through either
    before = sorted(os.listdir(edit_run))
    (edit_run / "region.nii.gz").rename(tmp_path / "region.nii.gz")
    (edit_run / "region.nii.gz").symlink_to(tmp_path / "region.nii.gz")
    try:
        assert cli(tiny_model, inputs, edit_run, "--edited", str(inputs["edited"]), "--overwrite") == EXIT_ERROR
        assert (tmp_path / "region.nii.gz").is_file()
    finally:
        (edit_run / "region.nii.gz").unlink()
        (tmp_path / "region.nii.gz").rename(edit_run / "region.nii.gz")
    assert sorted(os.listdir(edit_run)) == before


def test_a_folder_held_by_another_run_is_refused(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, no_sampling: None,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from dataset.files import OutputFolder

    with OutputFolder(tmp_path / "busy"):
        assert cli(tiny_model, inputs, tmp_path / "busy", "--edited", str(inputs["edited"])) == EXIT_ERROR
    assert "in use by another run" in caplog.text
    assert os.listdir(tmp_path) == []  # the holder's lock went with it; the refused run wrote nothing


# ----------------------------------------------------------- the user's ids (issue 23 item 2), merged ids
#: user ids 5 and 6 are one class (merged), 117 another: class ids 0, 1, 2 of the tiny model
USER_TABLE = {"name": "sparse", "classes": ["background", "outer", "inner"], "remap": [[0, 0], [5, 1], [6, 1],
                                                                                       [117, 2]]}  # fmt: skip


@pytest.fixture(scope="module")
def user_ids(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint with a label table, and the inputs' label maps in the user's (sparse, merged) ids."""
    d = tmp_path_factory.mktemp("edit_user_ids")
    ckpt = torch.load(tiny_model.diffusion, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["data_info"]["label_table"] = USER_TABLE
    torch.save(ckpt, d / "sparse.ckpt")
    shape = (18, 20, 24)
    classes = nested_labels(shape, LABEL_NC)
    user = np.array([0, 5, 117], dtype=np.int16)[classes]
    user[(classes == 1) & (np.arange(shape[2]) > 18)] = 6  # part of class 1 is stored as 6
    edited = user.copy()
    edited[8:11, 9:12, 4:7] = 117
    bad = edited.copy()
    bad[0, 0, 0] = 63
    return {
        "ckpt": d / "sparse.ckpt",
        "labels": write_nifti(d / "labels.nii.gz", user, AFFINE),
        "edited": write_nifti(d / "edited.nii.gz", edited, AFFINE),
        "class_ids": write_nifti(d / "class_ids.nii.gz", classes, AFFINE),
        "bad": write_nifti(d / "bad.nii.gz", bad, AFFINE),
    }


def _user_cli(user_ids: dict[str, Path], inputs: dict[str, Path], out: Path, *extra: str) -> int:
    from scripts.edit import main

    return main(["--ckpt", str(user_ids["ckpt"]), "--image", str(inputs["image"]), "--labels",
                 str(user_ids["labels"]), "--out", str(out), *FAST, *extra])  # fmt: skip


def test_edit_reads_and_writes_the_users_ids_through_the_checkpoints_table(
    tiny_model: TinyModel, inputs: dict[str, Path], user_ids: dict[str, Path], tmp_path: Path
) -> None:
    # --edited in the user's ids: the same region as the class-id edit of the plain checkpoint
    out = tmp_path / "edited"
    assert _user_cli(user_ids, inputs, out, "--edited", str(user_ids["edited"]), "--margin-mm", "3.1") == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["label_table"]["remap"] == USER_TABLE["remap"]
    changed = np.asarray(nib.load(inputs["labels"]).dataobj) != np.asarray(nib.load(inputs["edited"]).dataobj)
    assert record["region"]["changed_voxels"] == int(changed.sum()) > 0
    # edit options name the user's ids; the edited map comes back in them (merged 6 -> its class's smallest id, 5)
    out2 = tmp_path / "grown"
    assert _user_cli(user_ids, inputs, out2, "--grow", "117:2", "--replace", "6:117", "--within",
                     str(inputs["region"])) == 0  # fmt: skip
    before = np.asarray(nib.load(user_ids["labels"]).dataobj)
    after = np.asarray(nib.load(out2 / "edited_labels.nii.gz").dataobj)
    within = np.asarray(nib.load(inputs["region"]).dataobj) > 0
    assert set(np.unique(after)) <= {0, 5, 117} and (after == 117).sum() > (before == 117).sum()
    np.testing.assert_array_equal(after[~within], np.where(before == 6, 5, before)[~within])
    assert json.loads((out2 / "generation.json").read_text())["label_edits"][0]["text"] == "117:2"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--edited", "{bad}"], "bad.nii.gz: label values [63]"),  # a value outside the table: file and value
        (["--edited", "{class_ids}"], "label values [1, 2]"),  # class ids are not the user's ids
        (["--grow", "2:2"], "id 2 is not in the checkpoint's label table"),
    ],
)
def test_a_value_outside_the_label_table_is_refused_in_one_line(
    inputs: dict[str, Path], user_ids: dict[str, Path], tmp_path: Path, no_sampling: None, extra: list[str],
    message: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    args = [a.format(**{k: str(v) for k, v in user_ids.items()}) for a in extra]
    assert _user_cli(user_ids, inputs, out, *args) == EXIT_ERROR
    errors = _errors(caplog, capsys)
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


def test_a_table_with_a_class_no_id_maps_to_edits_from_a_file_but_refuses_to_write_a_map(
    tiny_model: TinyModel, inputs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """Like the CT's classes filled from tissue masks: a class without a file id can be read, never written back."""
    from scripts.edit import main

    ckpt = torch.load(tiny_model.diffusion, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["data_info"]["label_table"] = {**USER_TABLE, "remap": [[0, 0], [5, 1]]}
    torch.save(ckpt, tmp_path / "partial.ckpt")
    classes = nested_labels((18, 20, 24), LABEL_NC)
    user = np.where(classes > 0, 5, 0).astype(np.int16)
    edited = user.copy()
    edited[8:11, 9:12, 4:7] = 0
    labels = write_nifti(tmp_path / "labels.nii.gz", user, AFFINE)
    argv = ["--ckpt", str(tmp_path / "partial.ckpt"), "--image", str(inputs["image"]), "--labels", str(labels), *FAST]
    edited_path = write_nifti(tmp_path / "edited.nii.gz", edited, AFFINE)
    assert main([*argv, "--edited", str(edited_path), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*argv, "--grow", "5:2", "--out", str(tmp_path / "b")]) == EXIT_ERROR
    errors = _errors(caplog, capsys)
    assert len(errors) == 1 and "no source value maps to class(es) ['inner']" in errors[0], errors
    assert not (tmp_path / "b").exists()
