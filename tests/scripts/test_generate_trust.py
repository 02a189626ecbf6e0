"""Trust in generation: crafted checkpoints run nothing, names from data stay inside --out, run records and
``--overwrite``, output folders and devices checked before any work, SIGTERM, real-image export (issue 12)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dataset import DataError
from dataset.files import file_sha256
from tests.dataset.fakes import write_nifti
from tests.scripts.conftest import LabelMaps, nested_labels
from tests.scripts.test_generate import EXIT_ERROR, cli, names, outputs
from tests.tiny_checkpoints import TinyModel
from tests.train.helpers import REPO


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _crafted(tiny_model: TinyModel, path: Path, edit: callable) -> Path:
    """A copy of the tiny checkpoint whose hyper_parameters were changed by ``edit(hparams)``."""
    ckpt = torch.load(tiny_model.diffusion, map_location="cpu", weights_only=True)
    edit(ckpt["hyper_parameters"])
    torch.save(ckpt, path)
    return path


# ------------------------------------------------------------------------------------ crafted checkpoints
def _payload(marker: Path) -> dict:
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


FIELDS = [
    "label_nc", "denoiser_kwargs", "data_info", "data_info.intensity", "data_info.dataset_kwargs",
    "data_info.class_names", "first_stage_hparams", "first_stage_hparams.downsample", "guidance", "new_key",
]  # fmt: skip


@pytest.mark.parametrize("field", FIELDS)
def test_a_target_in_any_checkpoint_field_runs_nothing(
    field: str, tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"

    def edit(hp: dict) -> None:
        node, *rest = field.split(".")
        if rest:
            hp[node][rest[0]] = _payload(marker)
        else:
            hp[node] = _payload(marker)

    ckpt = _crafted(tiny_model, tmp_path / "crafted.ckpt", edit)
    out = tmp_path / "out"
    assert cli(tiny_model, "split=test", out, ckpt=ckpt) == EXIT_ERROR
    assert not marker.exists()  # nothing was called
    errors = _errors(caplog)
    assert len(errors) == 1 and "names code to call" in errors[0], errors
    assert not out.exists()


def test_every_hyperparameter_field_is_checked(tiny_model: TinyModel, tmp_path: Path) -> None:
    """The payload in each top-level field and in each field of data_info and first_stage_hparams: refused."""
    from diffusion.module import load_checkpoint

    marker = tmp_path / "pwned"
    ckpt = torch.load(tiny_model.diffusion, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    paths = [(k,) for k in hp] + [(n, k) for n in ("data_info", "first_stage_hparams") for k in hp[n]]
    assert len(paths) > 40
    for path in paths:
        # no weights: the file is refused on its hyperparameters, before any tensor is looked at
        copied = {k: dict(v) if isinstance(v, dict) else v for k, v in hp.items()}
        data = {"state_dict": {}, "hyper_parameters": copied}
        node = data["hyper_parameters"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = [1, {"nested": _payload(marker)}]  # deep inside a list too
        torch.save(data, tmp_path / "c.ckpt")
        with pytest.raises(DataError, match="names code to call"):
            load_checkpoint(tmp_path / "c.ckpt")
        assert not marker.exists(), path


def test_a_datamodule_node_in_the_checkpoints_data_info_is_refused_never_instantiated(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"

    def edit(hp: dict) -> None:  # a whole Hydra dataset node where plain data info belongs
        del hp["data_info"]["dataset_kwargs"]
        hp["data_info"]["datamodule"] = {
            "_target_": "builtins.open", "file": str(marker), "mode": "w",
            "dataset": {"_target_": "builtins.open", "file": str(marker), "num_samples": 8, "seed": 0},
        }  # fmt: skip

    ckpt = _crafted(tiny_model, tmp_path / "node.ckpt", edit)
    assert cli(tiny_model, "split=test", tmp_path / "out", "--guidance", "1", ckpt=ckpt) == EXIT_ERROR
    assert not marker.exists()
    assert "hyper_parameters.data_info.datamodule._target_ names code to call" in _errors(caplog)[0]


def test_lightning_instantiator_and_unknown_hyperparameters_are_refused(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _crafted(tiny_model, tmp_path / "inst.ckpt", lambda hp: hp.update(_instantiator="os.system"))
    assert cli(tiny_model, "split=test", tmp_path / "out", ckpt=ckpt) == EXIT_ERROR
    assert "unknown hyperparameter(s) ['_instantiator']" in _errors(caplog)[0]


def test_registry_refuses_unknown_keys_and_wrong_types() -> None:
    from dataset.registry import build_split, plain_data_info, validate_data_info

    good = {"name": "synthetic", "label_nc": 4, "block_size": [16, 16, 16], "voxel_size": [2.0, 1.5, 1.5]}
    assert len(build_split(good, "test")) >= 1
    for bad, message in [
        ({**good, "extra": 1}, "unknown field(s) ['extra']"),
        ({**good, "label_nc": "4"}, "data_info.label_nc: expected int"),
        ({**good, "label_nc": True}, "data_info.label_nc: expected int"),
        ({**good, "block_size": [16, 16]}, "expected 3 values"),
        ({**good, "name": "os", "dataset_kwargs": {}}, "unknown dataset 'os'"),
        ({**good, "dataset_kwargs": {"root": "/"}}, "unknown dataset argument(s) ['root']"),
        ({**good, "dataset_kwargs": {"seed": 0.5}}, "dataset_kwargs.seed: expected int"),
        ({**good, "intensity": {"kind": "none", "x": {"_target_": "os.system"}}}, "names code to call"),
        ({**good, "class_names": ["a", "b"]}, "2 class_names for label_nc=4"),
    ]:
        with pytest.raises(DataError, match=__import__("re").escape(message)):
            validate_data_info(bad)
    # a dataset config of its own name trains and generates from files; only split=... needs the table
    assert validate_data_info({**good, "name": "mydata"})["name"] == "mydata"
    with pytest.raises(DataError, match="not one of"):
        build_split({**good, "name": "mydata"}, "test")
    # a Hydra dataset config: the datamodule node is dropped, its plain dataset arguments kept
    cfg = {**good, "datamodule": {"_target_": "x.Y", "dataset": {"_target_": "x.Z", "num_samples": 3, "bogus": 1}}}
    assert plain_data_info(cfg)["dataset_kwargs"] == {"num_samples": 3}


# ------------------------------------------------------------------------------------- names from data
def test_ids_from_data_never_leave_out(tmp_path: Path) -> None:
    from diffusion.generation.pipeline import output_path
    from scripts.generate import dataset_volumes

    for bad in ("../../x", "/abs/x", ".hidden", "a/b", ""):
        with pytest.raises(DataError, match="cannot be used as a file name"):
            output_path(tmp_path, bad, 0)
        sample = {"id": bad, "label": torch.zeros(1, 4, 4, 4, dtype=torch.long), "affine": torch.eye(4)}
        with pytest.raises(DataError, match="cannot be used as a file name"):
            dataset_volumes([sample], "test")


def test_a_manifest_id_with_dots_is_refused_before_anything_is_written(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A nifti_pairs dataset whose manifest names a case ``../../x``: refused, nothing written anywhere."""
    root = tmp_path / "data"
    label = nested_labels((16, 16, 16))
    write_nifti(root / "img.nii.gz", (label / 3.0 * 2 - 1).astype(np.float32), np.eye(4))
    write_nifti(root / "lab.nii.gz", label, np.eye(4))
    entry = {"image": "img.nii.gz", "label": "lab.nii.gz", "split": "test", "id": "../../x", "patient": "p"}
    (root / "manifest.json").write_text(json.dumps({"entries": [entry]}))

    def edit(hp: dict) -> None:
        hp["data_info"] = {"name": "nifti_pairs", "label_nc": 4, "block_size": [16, 16, 16], "root": str(root),
                           "intensity": {"kind": "none"}, "voxel_size": [1.0, 1.0, 1.0]}  # fmt: skip

    ckpt = _crafted(tiny_model, tmp_path / "np.ckpt", edit)
    out = tmp_path / "a" / "b" / "out"
    rc = cli(tiny_model, "split=test", out, ckpt=ckpt)
    errors = _errors(caplog)
    assert rc == EXIT_ERROR, errors
    assert len(errors) == 1 and "'../../x'" in errors[0]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and "nii" in p.name) == [
        "img.nii.gz", "lab.nii.gz"
    ]  # fmt: skip


# ------------------------------------------------------------------------------ run record and --overwrite
def test_run_record_and_overwrite_replace_exactly_the_previous_set(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli(tiny_model, label_maps.small, out, "--num-samples", "3", "--seed", "4", "--png", "--gif") == 0
    first = outputs(["small_oblique"], samples=3, extra=(".png", ".gif"))
    assert names(out) == first
    record = json.loads((out / "generation.json").read_text())
    assert record["producer"] == "med-lsdm" and record["command"] == "generate"
    assert record["checkpoint"]["sha256"] == file_sha256(tiny_model.diffusion)
    assert (record["seed"], record["sampler"], record["steps"], record["num_samples"]) == (4, "ddim", 2, 3)
    assert record["guidance"] == pytest.approx(1.5) and record["data_range"] == [-1.0, 1.0]
    assert sorted(record["outputs"]) == sorted(n for n in first if n != "generation.json")
    assert record["inputs"] == [{"id": "small_oblique", "source": str(label_maps.small)}]

    (out / "notes.txt").write_text("mine")  # a foreign file: never touched
    (out / "other_s1.nii.gz").write_bytes(b"not ours")
    assert cli(tiny_model, label_maps.small, out, "--num-samples", "1", "--seed", "5", "--overwrite") == 0
    assert names(out) == sorted([*outputs(["small_oblique"]), "notes.txt", "other_s1.nii.gz"])
    assert (out / "notes.txt").read_text() == "mine" and (out / "other_s1.nii.gz").read_bytes() == b"not ours"
    assert json.loads((out / "generation.json").read_text())["outputs"] == ["small_oblique_s0.nii.gz"]


def test_without_a_record_overwrite_replaces_nothing(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path
) -> None:
    """Files of the right name that no record of ours lists are the user's: --overwrite refuses them (issue 20)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("small_oblique_s0.nii.gz", "small_oblique_s1.nii.gz"):
        (out / name).write_bytes(b"old")
    assert cli(tiny_model, label_maps.small, out) == EXIT_ERROR  # exists: refused without --overwrite
    assert cli(tiny_model, label_maps.small, out, "--overwrite") == EXIT_ERROR
    assert all((out / name).read_bytes() == b"old" for name in ("small_oblique_s0.nii.gz", "small_oblique_s1.nii.gz"))


def test_a_previous_run_or_a_foreign_record_is_refused_without_overwrite(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    assert cli(tiny_model, label_maps.small, out) == 0
    assert cli(tiny_model, label_maps.aniso, out) == EXIT_ERROR  # other names, but the folder holds a run
    assert "holds a previous run (generation.json)" in _errors(caplog)[-1]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "generation.json").write_text('{"mine": true}')
    assert cli(tiny_model, label_maps.small, foreign, "--overwrite") == EXIT_ERROR
    assert "is not a Med-LSDM run record" in _errors(caplog)[-1]
    assert (foreign / "generation.json").read_text() == '{"mine": true}'


# -------------------------------------------------------------------------------- errors before any work
@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import scripts.generate as generate

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although the output should have been refused first")

    monkeypatch.setattr(generate, "load_model", refuse)


def test_bad_output_locations_fail_before_the_model_is_loaded(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture, no_model: None
) -> None:
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out, message in [(afile, "is an existing file"), (afile / "sub", "is not writable")]:
        caplog.clear()
        assert cli(tiny_model, label_maps.small, out) == EXIT_ERROR
        errors = _errors(caplog)
        assert len(errors) == 1 and message in errors[0], errors
    caplog.clear()
    assert cli(tiny_model, "split=test", tmp_path / "ok", "--export-real", str(afile)) == EXIT_ERROR
    assert "--export-real" in _errors(caplog)[0] and not (tmp_path / "ok").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture, no_model: None
) -> None:
    assert cli(tiny_model, label_maps.small, tmp_path / "out", "--device", "cuda") == EXIT_ERROR
    assert _errors(caplog) == ["--device cuda: no CUDA GPU is available on this machine; use --device cpu"]
    assert not (tmp_path / "out").exists()


def test_the_cli_installs_the_signal_cleanup(tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path) -> None:
    import dataset.files

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli(tiny_model, label_maps.small, tmp_path / "out") == 0
        assert signal.getsignal(signal.SIGTERM) is dataset.files._cleanup_and_exit
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # a real process that imports Lightning, then a signal mid-run: tens of seconds on 2 cores
def test_sigterm_during_sampling_leaves_no_temporary_file(tiny_model: TinyModel, tmp_path: Path) -> None:
    big = write_nifti(tmp_path / "big.nii.gz", nested_labels((64, 64, 64)), np.diag([1.5, 1.5, 2.0, 1.0]))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "scripts/generate.py", "--ckpt", str(tiny_model.diffusion), "--labels", str(big),
         "--out", str(out), "--device", "cpu", "--sampler", "ddim", "--steps", "400", "--num-samples", "4"],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until sampling runs
        line = proc.stderr.readline()
        lines.append(line)
        if "label map(s)" in line or not line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + rest[-2000:]
    # the run created --out, so a killed run removes it whole (no empty folder left); if anything is left, it
    # holds no temporary (dot) file
    left = os.listdir(out) if out.exists() else []
    assert [n for n in left if n.startswith(".")] == []


# ------------------------------------------------------------------------------------------- real export
def test_export_real_writes_the_split_for_compute_metrics(tiny_model: TinyModel, tmp_path: Path) -> None:
    from dataset.registry import build_split

    real, fake = tmp_path / "real", tmp_path / "fake"
    assert cli(tiny_model, "split=test", fake, "--guidance", "1", "--export-real", str(real)) == 0
    ds = build_split(tiny_model.data_info, "test")
    ids = [str(ds[i]["id"]) for i in range(len(ds))]
    assert names(real) == sorted([*(f"{i}.nii.gz" for i in ids), "generation.json", "labels"])
    assert sorted(os.listdir(real / "labels")) == sorted(f"{i}.nii.gz" for i in ids)
    for i, vid in enumerate(ids):
        image = nib.load(str(real / f"{vid}.nii.gz"))
        label = nib.load(str(real / "labels" / f"{vid}.nii.gz"))
        np.testing.assert_allclose(image.affine, ds[i]["affine"].numpy())
        assert np.asarray(label.dataobj).max() < tiny_model.label_nc
        assert (fake / f"{vid}_s0.nii.gz").is_file()
    record = json.loads((real / "generation.json").read_text())
    assert record["command"] == "export-real" and record["data_range"] == [-1.0, 1.0]
