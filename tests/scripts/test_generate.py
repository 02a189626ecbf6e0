"""``scripts/generate.py`` end to end: a tiny checkpoint trained by the real entry points, real NIfTI label maps.

Most cases call ``main(argv)`` in-process (one import of Lightning for the module); two run the script in a
subprocess, as a user would (``python scripts/generate.py``, output not a TTY).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.dataset.fakes import PRIVATE_HEADER
from tests.scripts.conftest import LabelMaps, label_affine, nested_labels
from tests.tiny_checkpoints import TinyModel
from tests.train.helpers import REPO

FAST = ["--device", "cpu", "--sampler", "ddim", "--steps", "2"]
EXIT_ERROR = 2  # scripts/generate.py: every refused input / existing output


def cli(model: TinyModel, labels: Path | str, out: Path, *extra: str, ckpt: Path | None = None) -> int:
    """``scripts/generate.py`` in-process (returns the exit status)."""
    from scripts.generate import main

    return main(["--ckpt", str(ckpt or model.diffusion), "--labels", str(labels), "--out", str(out), *FAST, *extra])


def load(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img.header


def names(folder: Path) -> list[str]:
    """Every entry of a folder, hidden (temporary) files included."""
    return sorted(os.listdir(folder))


def outputs(ids: list[str], samples: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """What a run leaves in --out: one volume per id and sample, ``extra`` sidecars, and the run record."""
    stems = [f"{i}_s{k}" for i in ids for k in range(samples)]
    return sorted([f"{s}.nii.gz" for s in stems] + [f"{s}{e}" for s in stems for e in extra] + ["generation.json"])


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any sampling starts (inputs must be refused before)."""
    import diffusion.generation.pipeline as pipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampling started although the input should have been refused first")

    monkeypatch.setattr(pipeline, "sample_batch", refuse)


@dataclass
class FolderRun:
    out: Path
    rc: int
    windows: list[tuple[tuple[int, ...], int]]  # (sampled image shape, number of latent windows) per sampled batch


@pytest.fixture(scope="module")
def folder_run(tiny_model: TinyModel, label_maps: LabelMaps, tmp_path_factory: pytest.TempPathFactory) -> FolderRun:
    """``--labels FOLDER --num-samples 2 --seed 7``: the three oblique maps, recording how each was tiled."""
    import diffusion.sampling as sampling

    seen: list[tuple[tuple[int, ...], int]] = []

    class Recording(sampling.WindowedGuidedDenoiser):
        def __init__(self, denoiser: torch.nn.Module, labels: torch.Tensor, *args: object) -> None:
            super().__init__(denoiser, labels, *args)  # type: ignore[arg-type]
            seen.append((tuple(labels.shape[-3:]), len(self.windows)))

    out = tmp_path_factory.mktemp("folder_run") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampling, "WindowedGuidedDenoiser", Recording)
        rc = cli(tiny_model, label_maps.folder, out, "--num-samples", "2", "--seed", "7")
    assert rc == 0
    return FolderRun(out, rc, seen)


# ---------------------------------------------------------------------------------------------------------- outputs
def test_one_file_per_label_map_and_sample_and_nothing_else(folder_run: FolderRun) -> None:
    assert folder_run.rc == 0
    # notes.txt is skipped; no hidden temporary or partial files are left behind
    assert names(folder_run.out) == outputs(["aniso_oblique", "large_oblique", "small_oblique"], samples=2)


def test_outputs_have_the_input_grid_and_a_geometry_only_header(folder_run: FolderRun, label_maps: LabelMaps) -> None:
    for src in (label_maps.large, label_maps.small, label_maps.aniso):
        label, affine, header_in = load(src)
        assert header_in["descrip"].item() == PRIVATE_HEADER["descrip"]  # the input really carries them
        stem = src.name.split(".")[0]
        for k in range(2):
            image, out_affine, header = load(folder_run.out / f"{stem}_s{k}.nii.gz")
            assert image.shape == label.shape, src.name  # exact, odd sizes included
            assert np.allclose(out_affine, affine), src.name
            assert image.dtype == np.float32
            assert np.isfinite(image).all()
            assert image.std() > 0
            for key in PRIVATE_HEADER:
                assert header[key].item() == b"", f"{src.name}: {key} copied into the output"
            assert header["intent_code"] == 0
            assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
            assert np.allclose(header.get_qform(), affine, atol=1e-4)  # qform agrees (oblique, not only sform)


def test_large_map_is_sampled_in_windows_small_map_padded_other_voxel_size_resampled(folder_run: FolderRun) -> None:
    # jobs in input order (aniso, large, small), 2 samples each, one per batch
    shapes = [s for s, _ in folder_run.windows]
    counts = [n for _, n in folder_run.windows]
    # aniso: (D, H, W) = (13, 9, 30) at (2.0, 1.5, 0.8) mm -> (13, 9, 16) at the training voxel -> padded to 16^3
    # large: (37, 23, 41) padded to multiples of the latent factor 4 along depth and, in-plane, of 4 x 2 (the tiny
    # U-Net halves the plane once) so a whole plane is one window -> (40, 24, 48); small: (7, 11, 13) -> 16^3
    assert shapes == [(16, 16, 16)] * 2 + [(40, 24, 48)] * 2 + [(16, 16, 16)] * 2
    # latent (10, 6, 12): windows of the training depth 4 at overlap 0.5 (starts 0, 2, 4, 6), each a whole plane
    assert counts[2] == counts[3] == 4  # block-wise (MultiDiffusion) denoising of the large map along depth
    assert counts[0] == counts[1] == counts[4] == counts[5] == 1


def test_samples_of_one_label_map_differ(folder_run: FolderRun) -> None:
    for stem in ("aniso_oblique", "large_oblique", "small_oblique"):
        s0, _, _ = load(folder_run.out / f"{stem}_s0.nii.gz")
        s1, _, _ = load(folder_run.out / f"{stem}_s1.nii.gz")
        assert not np.array_equal(s0, s1), stem


# ------------------------------------------------------------------------------------------ determinism, inputs
def test_same_seed_same_volumes_bit_for_bit(folder_run: FolderRun, tiny_model: TinyModel, label_maps: LabelMaps,
                                            tmp_path: Path) -> None:  # fmt: skip
    # --labels FILE; a run without the other maps still gives each volume the same noise (per-volume seeds)
    out = tmp_path / "again"
    assert cli(tiny_model, label_maps.small, out, "--num-samples", "2", "--seed", "7") == 0
    assert names(out) == outputs(["small_oblique"], samples=2)
    for k in range(2):
        again, _, _ = load(out / f"small_oblique_s{k}.nii.gz")
        first, _, _ = load(folder_run.out / f"small_oblique_s{k}.nii.gz")
        assert again.tobytes() == first.tobytes()


def test_other_seed_other_volumes_and_glob_input_with_previews(
    folder_run: FolderRun, tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path
) -> None:
    out = tmp_path / "seed8"
    pattern = str(label_maps.folder / "[as]*_oblique.nii*")  # a quoted glob: aniso + small, not large
    assert cli(tiny_model, pattern, out, "--seed", "8", "--png", "--gif") == 0
    stems = ["aniso_oblique_s0", "small_oblique_s0"]
    assert names(out) == outputs(["aniso_oblique", "small_oblique"], extra=(".png", ".gif"))
    for stem in stems:
        other, _, _ = load(out / f"{stem}.nii.gz")
        first, _, _ = load(folder_run.out / f"{stem}.nii.gz")
        assert other.shape == first.shape
        assert not np.allclose(other, first)


def test_batches_give_the_same_volumes_as_single_runs(
    folder_run: FolderRun, tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path
) -> None:
    out = tmp_path / "batched"
    assert cli(tiny_model, label_maps.small, out, "--num-samples", "2", "--seed", "7", "--batch-size", "2") == 0
    singles = [load(folder_run.out / f"small_oblique_s{k}.nii.gz")[0] for k in range(2)]
    for k in range(2):
        batched, _, _ = load(out / f"small_oblique_s{k}.nii.gz")
        # Same noise per item; only float rounding of batched convolutions differs (amplified by the large first
        # DDIM step), far below the difference between two samples.
        np.testing.assert_allclose(batched, singles[k], atol=1e-2)
        assert np.abs(batched - singles[k]).max() < 0.05 * np.abs(singles[0] - singles[1]).max()


def test_no_resample_samples_on_the_input_grid(
    folder_run: FolderRun, tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import diffusion.generation.pipeline as pipeline

    seen: list[tuple[int, ...]] = []
    real = pipeline.sample_batch

    def spy(model: torch.nn.Module, labels: list[torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(tuple(labels[0].shape))
        return real(model, labels, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "sample_batch", spy)
    caplog.set_level(logging.INFO)
    out = tmp_path / "native"
    assert cli(tiny_model, label_maps.aniso, out, "--seed", "7", "--no-resample") == 0
    assert seen == [(16, 16, 32)]  # (13, 9, 30) padded on its own 0.8 mm grid, not resampled to 1.5 mm
    assert not [r for r in caplog.records if "-> training" in r.getMessage()]
    label, affine, _ = load(label_maps.aniso)
    native, out_affine, _ = load(out / "aniso_oblique_s0.nii.gz")
    assert native.shape == label.shape and np.allclose(out_affine, affine) and np.isfinite(native).all()
    resampled, _, _ = load(folder_run.out / "aniso_oblique_s0.nii.gz")
    assert not np.allclose(native, resampled)  # same seed, other working grid

    caplog.clear()
    seen.clear()
    assert cli(tiny_model, label_maps.aniso, tmp_path / "resampled", "--seed", "7") == 0
    assert seen == [(16, 16, 16)]
    assert any("-> training (2.0, 1.5, 1.5) mm" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------------------- overwriting
def test_existing_outputs_are_refused_untouched_unless_overwrite(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ("--seed", "3", "--guidance", "1", "--png")
    assert cli(tiny_model, label_maps.small, out, *args) == 0
    target = out / "small_oblique_s0.nii.gz"
    before = (target.read_bytes(), target.stat().st_mtime_ns, target.stat().st_ino, names(out))

    caplog.clear()
    assert cli(tiny_model, label_maps.small, out, *args) == EXIT_ERROR
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(target) in errors[0] and "--overwrite" in errors[0]
    assert (target.read_bytes(), target.stat().st_mtime_ns, target.stat().st_ino, names(out)) == before

    assert cli(tiny_model, label_maps.small, out, *args, "--overwrite") == 0
    assert target.stat().st_ino != before[2]  # replaced by a new, complete file
    assert target.read_bytes() == before[0]  # same seed, same volume
    assert names(out) == before[3] == outputs(["small_oblique"], extra=(".png",))


def test_an_existing_preview_alone_is_refused_before_sampling(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, no_sampling: None
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "small_oblique_s0.png").write_bytes(b"old preview")
    assert cli(tiny_model, label_maps.small, out, "--png") == EXIT_ERROR
    assert names(out) == ["small_oblique_s0.png"] and (out / "small_oblique_s0.png").read_bytes() == b"old preview"


# -------------------------------------------------------------------------------------------------- bad inputs
def _bad_labels(kind: str, folder: Path, write: Callable[..., Path]) -> Path:
    good = nested_labels((11, 13, 7))
    if kind == "unknown_class":
        bad = good.copy()
        bad[0, 0, :2] = (4, 6)  # the model knows 0..3
        return write(folder / "b_bad.nii.gz", bad)
    if kind == "non_integer":
        return write(folder / "b_bad.nii.gz", np.where(good == 2, 1.5, good).astype(np.float32))
    if kind == "four_d":
        return write(folder / "b_bad.nii.gz", np.stack([good, good], axis=-1))
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("unknown_class", "classes [4, 6] unknown to the model (it knows 0..3)"),
        ("non_integer", "non-integer values"),
        ("four_d", "expected a 3-D volume, got shape (11, 13, 7, 2)"),
    ],
)
def test_bad_label_map_in_a_folder_fails_before_any_sampling(
    kind: str, problem: str, tiny_model: TinyModel, tmp_path: Path, write_label: Callable[..., Path],
    caplog: pytest.LogCaptureFixture, no_sampling: None,
) -> None:  # fmt: skip
    folder = tmp_path / "labels"
    write_label(folder / "a_good.nii.gz", nested_labels((11, 13, 7)))  # sorted first: must not be generated either
    bad = _bad_labels(kind, folder, write_label)
    out = tmp_path / "out"
    assert cli(tiny_model, folder, out) == EXIT_ERROR
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(str(bad)) and problem in errors[0]
    assert not out.exists()


def test_bad_arguments_fail_before_any_sampling(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture, no_sampling: None,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    text = tmp_path / "labels.txt"
    text.write_text("1 2 3\n")
    cases: list[tuple[dict, str]] = [
        ({"labels": missing}, f"--labels {missing}: no such file or folder"),
        ({"labels": text}, f"{text}: not a NIfTI file"),
        ({"ckpt": tiny_model.vqgan}, f"{tiny_model.vqgan}: a stage-1 VQ-GAN (train/train_vqgan.py) checkpoint"),
        ({"ckpt": tmp_path / "none.ckpt"}, f"{tmp_path / 'none.ckpt'}: checkpoint not found"),
        ({"ckpt": text}, f"{text}: not a readable PyTorch checkpoint"),
        ({"extra": ("--sampler", "rflow")}, "--sampler rflow does not fit this model"),
        # refused while parsing (dataset.cli): argparse's one line on stderr
        ({"extra": ("--num-samples", "0")}, "argument --num-samples: 0 must be a positive integer"),
        ({"extra": ("--overlap", "1.0")}, "argument --overlap: 1.0 is outside [0, 1)"),
        ({"extra": ("--batch-size", "0")}, "argument --batch-size: 0 must be a positive integer"),
        ({"extra": ("--guidance", "nan")}, "argument --guidance: 'nan' is not a finite number"),
    ]
    for case, message in cases:
        caplog.clear()
        capsys.readouterr()
        extra = case.get("extra", ())  # after FAST: argparse keeps the last --sampler
        rc = cli(tiny_model, case.get("labels", label_maps.small), out, *extra, ckpt=case.get("ckpt"))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        errors += [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert rc == EXIT_ERROR, case
        assert len(errors) == 1 and message in errors[0], (case, errors)
        assert not out.exists(), case


# ------------------------------------------------------------------------------------------- as a real script
def _script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", os.environ.get("MEDLSDM_TEST_THREADS", "1"))
    return subprocess.run(
        [sys.executable, "scripts/generate.py", *args],
        cwd=REPO,
        capture_output=True,  # stdout/stderr are pipes, not a TTY: the progress bars must cope
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture
def test_split(tiny_model: TinyModel) -> list[tuple[str, np.ndarray]]:
    """(id, affine) of the test split of the checkpoint's dataset, built from the recorded config."""
    from dataset.registry import build_split

    ds = build_split(tiny_model.data_info, "test")
    return [(str(ds[i]["id"]), ds[i]["affine"].numpy()) for i in range(len(ds))]


def test_script_generates_the_test_split(
    tiny_model: TinyModel, tmp_path: Path, test_split: list[tuple[str, np.ndarray]]
) -> None:
    out = tmp_path / "split"
    proc = _script("--ckpt", str(tiny_model.diffusion), "--labels", "split=test", "--out", str(out), *FAST,
                   "--guidance", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    # On a pipe (a log file) there is no progress bar, so no carriage-return fragments: the log lines say it all
    assert "volumes:" not in proc.stderr and "\r" not in proc.stderr
    assert f"wrote {len(test_split)} volume(s)" in proc.stderr
    assert names(out) == outputs([i for i, _ in test_split])
    for volume_id, affine in test_split:
        image, out_affine, _ = load(out / f"{volume_id}_s0.nii.gz")
        assert image.shape == tiny_model.block  # synthetic phantoms are one block
        assert np.allclose(out_affine, affine) and np.isfinite(image).all()


def test_script_reports_a_missing_label_file(tiny_model: TinyModel, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "case_001.nii.gz"
    out = tmp_path / "out"
    proc = _script("--ckpt", str(tiny_model.diffusion), "--labels", str(missing), "--out", str(out), *FAST)
    assert proc.returncode == EXIT_ERROR
    assert "Traceback" not in proc.stderr
    assert f"ERROR dataset.cli: --labels {missing}: no such file or folder" in proc.stderr
    assert not out.exists()


def test_oblique_affines_really_are_oblique() -> None:
    # guard for the fixtures: rotated (off-diagonal terms), non-isotropic, translated
    affine = label_affine((1.5, 0.8, 2.0))
    assert np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))).max() > 0.1
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (1.5, 0.8, 2.0))
    assert np.abs(affine[:3, 3]).max() > 0
