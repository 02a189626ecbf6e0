"""User errors at the training entry points: one line on stderr, exit status 2, no traceback, nothing trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.helpers import TINY_DIFFUSION, TINY_VQGAN, compose_config, run_entry
from train.run import ConfigError, check_machine, user_error, validate_config


def test_bad_value_on_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    """The real command line, in a subprocess: exit status, stderr and no traceback."""
    out = tmp_path / "run"
    proc = run_entry("train_vqgan", [*TINY_VQGAN, f"paths.output_dir={out}", "trainer.max_steps=abc"], check=False)
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == ["error: trainer.max_steps='abc': expected an integer >= -1"], proc.stderr
    assert not (out / "checkpoints").exists()


def _main(entry: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple:
    """Run an entry point's ``main()`` in this process (the same code as the command line, without the start-up)."""
    import importlib
    import sys

    # Hydra must not reconfigure this process's logging (pytest's capture lives there)
    monkeypatch.setattr(sys, "argv", [entry, *argv, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"train.{entry}").main()
    err = capsys.readouterr().err
    return exit_.value.code, [line for line in err.splitlines() if line.startswith("error: ")], err


@pytest.mark.parametrize(
    ("entry", "override", "needles"),
    [
        ("train_vqgan", "dataset.block_size=32", ("dataset.block_size=32", "3 positive integers")),
        ("train_vqgan", "dataset.label_nc=3", ("dataset.label_nc=3", "class_names has 4 names")),
        ("train_vqgan", "dataset.label_nc=1", ("dataset.label_nc=1", "integer >= 2")),
        ("train_diffusion", "model.first_stage_ckpt=no.ckpt", ("no.ckpt",)),
        ("train_diffusion", "model.first_stage_ckpt=x.ckpt trainer.max_steps=abc", ("trainer.max_steps",)),
        ("train_vqgan", "dataset=no_such_dataset", ("no_such_dataset",)),  # Hydra's own refusal
        ("train_label_ae", "trainer.max_steps=abc", ("trainer.max_steps",)),
        ("train_label_diffusion", "trainer.max_steps=3", ("label_ae_ckpt",)),
    ],
    ids=[
        "block_size",
        "label_nc-vs-class_names",
        "label_nc",
        "missing-weights",
        "diffusion-max_steps",
        "hydra",
        "label-ae",
        "label-diffusion",
    ],  # fmt: skip
)
def test_user_errors_exit_2_with_one_line(
    entry: str, override: str, needles: tuple[str, ...], tmp_path: Path, monkeypatch, capsys
) -> None:
    tiny = {"train_vqgan": TINY_VQGAN, "train_diffusion": TINY_DIFFUSION}.get(
        entry, ["dataset=synthetic", "trainer=cpu"]
    )
    out = tmp_path / "run"
    code, lines, err = _main(entry, [*tiny, f"paths.output_dir={out}", *override.split()], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and all(n in lines[0] for n in needles), lines
    assert not (out / "checkpoints").exists()


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config(
        "vqgan", ["dataset=synthetic", "model=vq_gan_3d_tiny", f"paths.output_dir={tmp_path}", *overrides]
    )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("trainer.max_steps=2.5", "trainer.max_steps"),
        ("trainer.max_epochs=-3", "trainer.max_epochs"),
        ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches"),
        ("dataset.block_size=[16,16]", "3 positive integers"),
        ("dataset.block_size=[16,16,0]", "3 positive integers"),
        ("dataset.block_size=[16,16,18]", "not divisible by model.downsample"),
        ("dataset.label_nc=1", "integer >= 2"),
        ("dataset.label_nc=abc", "integer >= 2"),
        ("seed=x", "seed"),
    ],
)
def test_config_values_are_checked_before_anything_is_built(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(_cfg(tmp_path, override))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_gpu_is_a_user_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "trainer.accelerator=gpu")
    validate_config(cfg)  # a valid config...
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_machine(cfg)  # ...that this machine cannot run


def test_user_errors_are_found_inside_wrapping_exceptions() -> None:
    from hydra.errors import InstantiationException

    from dataset.contract import DataError

    try:
        try:
            raise DataError("label value 4 >= label_nc 3")
        except DataError as inner:
            raise InstantiationException("Error in call to target 'x'") from inner
    except InstantiationException as outer:
        assert isinstance(user_error(outer), DataError)
    assert user_error(RuntimeError("a bug")) is None


def test_a_run_folder_whose_checkpoints_all_fail_to_load_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 4092)  # truncated
    code, lines, err = _main("train_vqgan", [*TINY_VQGAN, f"paths.output_dir={out}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "no checkpoint in" in lines[0], err
    assert (out / "checkpoints" / "last.ckpt").stat().st_size == 4096  # not overwritten by a fresh start


def _wrong_stage_checkpoint(path: Path) -> Path:
    """A readable checkpoint of the stage-2 (diffusion) kind: plain data only, as torch.save writes it."""
    torch.save({"hyper_parameters": {"first_stage_hparams": {"n_codes": 8}}, "state_dict": {}}, path)
    return path


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.lr=nan", "model.lr=nan: not a finite number"),
        ("trainer.gradient_clip_val=nan", "trainer.gradient_clip_val=nan: not a finite number"),
        ("dataset.voxel_size=[0,1,1]", "dataset.voxel_size=[0, 1, 1]"),
        ("model.lr=-1", "model.lr=-1: expected a number > 0"),
        ("dataset.datamodule.batch_size=0", "dataset.datamodule.batch_size=0"),
        ("trainer.max_time=abc", "trainer.max_time='abc'"),
        ("ckpt_path=NOTCKPT", "not a readable PyTorch checkpoint"),
        (
            "ckpt_path=WRONGSTAGE",
            "a stage-2 image diffusion (train/train_diffusion.py) checkpoint; expected a stage-1",
        ),
    ],
)
def test_item27_bad_values_and_checkpoints_exit_2_with_one_line(
    override: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 20 item 27: these gave a traceback or Hydra's multi-line error with exit status 1."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    override = override.replace("NOTCKPT", str(text))
    override = override.replace("WRONGSTAGE", str(_wrong_stage_checkpoint(tmp_path / "stage2.ckpt")))
    out = tmp_path / "run"
    code, lines, err = _main("train_vqgan", [*TINY_VQGAN, f"paths.output_dir={out}", override], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], lines
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.teacher_ckpt=NOTCKPT", "not a readable PyTorch checkpoint"),
        ("model.teacher_ckpt=VQGAN", "a stage-1 VQ-GAN (train/train_vqgan.py) checkpoint; expected a stage-2"),
        ("model.teacher_ckpt=VQGAN ckpt_path=NOTCKPT", "ckpt_path"),
    ],
    ids=["teacher-not-a-checkpoint", "teacher-of-another-stage", "resume-not-a-checkpoint"],
)
def test_distill_teacher_and_resume_checkpoints_are_checked_in_one_line(
    override: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """train_distill's checkpoints go through the same stage check as the other entry points' (item 27)."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    vqgan = tmp_path / "vqgan.ckpt"
    torch.save({"hyper_parameters": {"n_codes": 8}, "state_dict": {}}, vqgan)
    overrides = override.replace("NOTCKPT", str(text)).replace("VQGAN", str(vqgan)).split()
    out = tmp_path / "run"
    argv = ["dataset=synthetic", "trainer=cpu", f"paths.output_dir={out}", *overrides]
    code, lines, err = _main("train_distill", argv, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], lines
    assert not (out / "checkpoints").exists() and not (out / "teacher_pairs").exists()


def test_label_value_outside_the_table_stops_training_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 23: a file value the dataset's label table lacks names the file and the value, before any step."""
    from tests.scripts.own_data import write_sparse_ct_folder

    data = tmp_path / "ts"
    write_sparse_ct_folder(data, n_cases=4)  # values 0, 5, 51, 117
    table = tmp_path / "ts_labels.yaml"  # 117 (costal cartilages) left out, as a table written for another tool
    table.write_text("name: ts\nclasses: [background, liver, heart]\nremap: {0: 0, 5: liver, 51: heart}\n")
    out = tmp_path / "run"
    argv = ["experiment=nifti_pairs_vqgan_cpu", "trainer.max_steps=2", f"dataset.root={data}", "dataset.label_nc=3",
            "dataset.class_names=[background,liver,heart]", f"dataset.label_table={table}",
            "dataset.block_size=[16,16,16]", "dataset.intensity={kind: ct_window, hu_min: -1000, hu_max: 1000}",
            "logger=csv", f"paths.output_dir={out}"]  # fmt: skip
    code, lines, err = _main("train_vqgan", argv, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and ".nii.gz" in lines[0] and "[117]" in lines[0], lines
    assert not (out / "checkpoints").exists()
