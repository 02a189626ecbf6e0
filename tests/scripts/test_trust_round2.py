"""Issue 20, data loss: the output-folder contract (``dataset.files``) as every writing command uses it.

Each test reproduces one numbered defect of the issue on the command itself (``main(argv)`` in-process); on the
code before the shared layer it fails (a deleted or replaced user file, exit 0 where a refusal is due).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dataset.files import LOCK_NAME, OutputFolder
from tests.scripts.conftest import LabelMaps
from tests.scripts.test_generate import cli
from tests.tiny_checkpoints import TinyLabelModel, TinyModel

EXIT_ERROR = 2


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _labels(model: TinyLabelModel, out: Path, *extra: str) -> int:
    from scripts.generate_labels import main

    return main(["--ckpt", str(model.label_diffusion), "--out", str(out), "--device", "cpu", *extra])


# ------------------------------------------------------------------ 1. no deleting through a symbolic link
def test_item01_generate_overwrite_never_deletes_through_a_link(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    assert cli(tiny_model, label_maps.small, out) == 0
    notes = out / "notes.txt"
    notes.write_text("mine")
    recorded = out / "small_oblique_s0.nii.gz"
    recorded.unlink()
    recorded.symlink_to("notes.txt")  # a recorded output entry that now points at the user's file
    # another input: the recorded entry would be stale, i.e. deleted
    assert cli(tiny_model, label_maps.aniso, out, "--overwrite") == EXIT_ERROR
    assert "symbolic link" in _errors(caplog)[-1]
    assert notes.read_text() == "mine" and recorded.is_symlink()


def test_item01_generate_labels_overwrite_never_deletes_through_a_link(
    tiny_label_model: TinyLabelModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "maps"
    assert _labels(tiny_label_model, out, "--num-samples", "2") == 0
    notes = out / "notes.txt"
    notes.write_text("mine")
    (out / "map0001.nii.gz").unlink()
    (out / "map0001.nii.gz").symlink_to("notes.txt")
    assert _labels(tiny_label_model, out, "--num-samples", "1", "--overwrite") == EXIT_ERROR
    assert "symbolic link" in _errors(caplog)[-1]
    assert notes.read_text() == "mine"


# -------------------------------------------------------- 2. --overwrite leaves unrecorded files alone
def test_item02_generate_overwrite_refuses_a_same_named_unrecorded_file(
    tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    assert cli(tiny_model, label_maps.small, out) == 0  # the record lists small_oblique_s0.nii.gz only
    theirs = out / "large_oblique_s0.nii.gz"
    theirs.write_bytes(b"not ours")
    assert cli(tiny_model, label_maps.large, out, "--overwrite") == EXIT_ERROR
    assert "was not written by a previous run" in _errors(caplog)[-1]
    assert theirs.read_bytes() == b"not ours"


# ---------------------------------------------------------- 3. no writing through a linked sub-folder
def test_item03_export_real_never_writes_through_a_linked_labels_folder(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = tmp_path / "real"
    real.mkdir()
    (real / "labels").symlink_to(elsewhere, target_is_directory=True)
    rc = cli(tiny_model, "split=test", tmp_path / "fake", "--export-real", str(real))
    assert rc == EXIT_ERROR and "symbolic link" in _errors(caplog)[-1]
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "fake").exists()


# ------------------------------------------------------- 4. one folder for --out and --export-real
def test_item04_out_and_export_real_must_be_separate_folders(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    both = tmp_path / "both"
    rc = cli(tiny_model, "split=test", both, "--export-real", str(both), "--overwrite")
    assert rc == EXIT_ERROR and "overlap" in _errors(caplog)[-1]
    assert not both.exists()


def test_item04_a_refused_out_leaves_export_real_unwritten(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, real = tmp_path / "fake", tmp_path / "real"
    assert cli(tiny_model, "split=test", fake) == 0
    # --out holds a previous run and there is no --overwrite: refused before the real volumes are exported
    assert cli(tiny_model, "split=test", fake, "--export-real", str(real)) == EXIT_ERROR
    assert "pass --overwrite" in _errors(caplog)[-1]
    assert not real.exists()


# --------------------------------------------- 5. the demo checks every option before it touches --out
def test_item05_demo_overwrite_checks_options_first_and_keeps_user_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scripts import demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"producer": "med-lsdm", "command": "scripts/demo.py"}))
    (out / "notes.txt").write_text("mine")
    (out / "vqgan").mkdir()
    assert demo.main(["--out", str(out), "--overwrite", "--extra", "trainer.max_steps=abc"]) == EXIT_ERROR
    assert "trainer.max_steps" in _errors(caplog)[-1]
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "notes.txt", "vqgan"]


def test_item05_demo_overwrite_removes_only_its_recorded_entries(tmp_path: Path) -> None:
    from dataset.files import claim_run_folder
    from scripts.demo import DEMO_ENTRIES, DEMO_RECORD

    out = tmp_path / "demo"
    with claim_run_folder(out, False, DEMO_RECORD, "scripts/demo.py", DEMO_ENTRIES):
        (out / "vqgan").mkdir()
        (out / "vqgan" / "last.ckpt").write_text("old")
    (out / "notes.txt").write_text("mine")
    with claim_run_folder(out, True, DEMO_RECORD, "scripts/demo.py", DEMO_ENTRIES):
        assert sorted(p.name for p in out.iterdir()) == sorted([DEMO_RECORD, "notes.txt", LOCK_NAME])
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------- 6. inspect_dataset replaces only its own, unedited file
def test_item06_inspect_dataset_overwrite_keeps_a_hand_written_yaml(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scripts.inspect_dataset import main
    from tests.evaluation.conftest import export_phantoms

    root = tmp_path / "data"
    export_phantoms("train", root, 2)
    out = tmp_path / "cfg" / "mine.yaml"
    out.parent.mkdir()
    out.write_text("name: nifti_pairs  # written by hand\n")
    assert main([str(root), "--name", "mine", "--out", str(out), "--overwrite"]) == EXIT_ERROR
    assert "not written by this project" in _errors(caplog)[-1]
    assert out.read_text() == "name: nifti_pairs  # written by hand\n"
    out.unlink()
    assert main([str(root), "--name", "mine", "--out", str(out)]) == 0
    assert main([str(root), "--name", "mine", "--out", str(out), "--overwrite"]) == 0  # ours, unedited
    out.write_text(out.read_text() + "# my note\n")  # edited by the user: theirs now
    assert main([str(root), "--name", "mine", "--out", str(out), "--overwrite"]) == EXIT_ERROR


# ----------------------------------------------------------------- 7. one run at a time per folder
def test_item07_a_second_run_into_a_held_folder_is_refused(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, label_maps: LabelMaps, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    out = tmp_path / "maps"
    with OutputFolder(out):  # another run holds the folder (flock: refused even within one process)
        assert _labels(tiny_label_model, out) == EXIT_ERROR
        assert "in use by another run" in _errors(caplog)[-1]
        assert cli(tiny_model, label_maps.small, out) == EXIT_ERROR
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert not out.exists()  # the holder made it and left it empty: removed with the lock
    assert _labels(tiny_label_model, out) == 0


# =============================================================================== silent wrong numbers
def _one_error_line(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The error lines of a refused run: argparse's on stderr, or the logged one."""
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    return lines + _errors(caplog)


def test_item08_nan_or_inf_guidance_is_refused(
    tiny_model: TinyModel, tiny_label_model: TinyLabelModel, label_maps: LabelMaps, tmp_path: Path,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    assert cli(tiny_model, label_maps.small, tmp_path / "a", "--guidance", "nan") == EXIT_ERROR
    assert "--guidance: 'nan' is not a finite number" in _one_error_line(capsys, caplog)[0]
    assert _labels(tiny_label_model, tmp_path / "b", "--condition", "outer=900", "--guidance", "inf") == EXIT_ERROR
    assert "--guidance: 'inf' is not a finite number" in _one_error_line(capsys, caplog)[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    from diffusion.generation.pipeline import GenerationSettings

    with pytest.raises(ValueError, match="finite"):
        GenerationSettings(guidance=float("nan"))


def _pairs(label: TinyLabelModel, image: TinyModel, out: Path, *extra: str, label_ckpt: Path | None = None) -> int:
    from scripts.generate_pairs import main

    ckpts = ["--label-ckpt", str(label_ckpt or label.label_diffusion), "--image-ckpt", str(image.diffusion)]
    return main([*ckpts, "--out", str(out), "--device", "cpu", "--label-steps", "2", "--image-steps", "2", *extra])


def test_item12_zero_steps_are_refused_not_replaced_by_the_defaults(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "pairs"
    for extra in (["--image-steps", "0"], ["--label-steps", "0"]):
        assert _pairs(tiny_label_model, tiny_model, out, *extra) == EXIT_ERROR, extra
        assert "must be a positive integer" in capsys.readouterr().err
        assert not out.exists(), extra


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--image-steps", "-3"]], ids=["batch-size", "steps"])
def test_item18_a_bad_count_is_refused_before_any_label_map_is_written(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture,
    extra: list[str],
) -> None:  # fmt: skip
    out = tmp_path / "pairs"
    assert _pairs(tiny_label_model, tiny_model, out, *extra) == EXIT_ERROR
    assert not out.exists()  # the old code refused only after labels/ was written
    assert "must be a positive integer" in capsys.readouterr().err


def _edited_checkpoint(src: Path, dest: Path, **hparams: object) -> Path:
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"].update(hparams)
    torch.save(ckpt, dest)
    return dest


@pytest.mark.parametrize(
    ("edit", "needle"),
    # 'inner' is kept: the label model's centroid class must still exist, or it is refused for that instead
    [
        ({"class_names": ["background", "outer", "core", "inner"]}, "classes"),
        ({"block_size": [8, 8, 8]}, "block size"),
    ],
    ids=["class-table", "block-size"],
)
def test_item13_generate_pairs_refuses_models_of_other_class_tables_or_blocks(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    edit: dict, needle: str,
) -> None:  # fmt: skip
    other = _edited_checkpoint(tiny_label_model.label_diffusion, tmp_path / "other.ckpt", **edit)
    out = tmp_path / "pairs"
    assert _pairs(tiny_label_model, tiny_model, out, label_ckpt=other) == EXIT_ERROR
    assert needle in _errors(caplog)[-1] and not out.exists()


def test_item13_label_diffusion_refuses_an_autoencoder_of_another_class_table(
    tiny_label_model: TinyLabelModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tests.train.test_entry_errors import _main

    ae = _edited_checkpoint(tiny_label_model.label_ae, tmp_path / "ae.ckpt",
                            class_names=["background", "a", "b", "c"])  # fmt: skip
    out = tmp_path / "run"
    code, lines, err = _main(
        "train_label_diffusion",
        ["dataset=synthetic", "trainer=cpu", "model=label_diffusion_tiny", f"model.label_ae_ckpt={ae}",
         f"paths.output_dir={out}", f"paths.data_dir={tiny_label_model.data_dir}", "trainer.max_steps=1"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == EXIT_ERROR and len(lines) == 1 and "trained on classes" in lines[0], err
    assert not (out / "checkpoints").exists()


# ======================================================================================= refused late
def test_item19_a_failed_image_half_leaves_the_previous_pairs_whole(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pairs"
    assert _pairs(tiny_label_model, tiny_model, out, "--num-samples", "1") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import scripts.generate

    monkeypatch.setattr(scripts.generate, "main", lambda argv=None: EXIT_ERROR)  # the image half refuses
    assert _pairs(tiny_label_model, tiny_model, out, "--num-samples", "2", "--overwrite") == EXIT_ERROR
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no new labels/ beside the old images/


def test_leftover_pairs_killed_in_the_image_half_leave_nothing(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scripts.generate

    def killed(argv: list[str] | None = None) -> int:
        raise SystemExit(128 + 15)  # what SIGTERM becomes (dataset.files.install_signal_cleanup)

    monkeypatch.setattr(scripts.generate, "main", killed)
    out = tmp_path / "pairs"
    with pytest.raises(SystemExit):
        _pairs(tiny_label_model, tiny_model, out, "--num-samples", "2")
    assert not out.exists()  # no labels/ without images/, no staging folder, no lock


def test_leftover_a_killed_runs_staging_folder_is_removed_by_the_next_run(
    tiny_label_model: TinyLabelModel, tmp_path: Path
) -> None:
    out = tmp_path / "maps"
    with OutputFolder(out) as claimed:  # a run killed with SIGKILL: its staging folder stays
        stale = claimed.staging("labels")
        (stale / "map0000.nii.gz").write_bytes(b"finished map")
        claimed._staging.clear()  # SIGKILL: no clean-up ran
    theirs = out / ".staging-mine"  # not made by us (no marker): never removed
    theirs.mkdir()
    assert stale.is_dir()
    assert _labels(tiny_label_model, out) == 0
    assert not stale.exists() and theirs.is_dir()
    assert sorted(p.name for p in out.iterdir()) == [".staging-mine", "labels_run.json", "map0000.nii.gz"]


def test_item21_utility_protocol_refuses_zero_steps_before_claiming(tmp_path: Path) -> None:
    from scripts import utility_protocol

    demo_dir = tmp_path / "demo"
    for name in utility_protocol.check_demo(demo_dir):
        (demo_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (demo_dir / name).write_text("x") if "." in Path(name).name else (demo_dir / name).mkdir()
    assert utility_protocol.check_demo(demo_dir) == []
    out = tmp_path / "util"
    argv = ["--demo", str(demo_dir), "--out", str(out), "--curve-steps", "0", "--eval-every", "0"]
    assert utility_protocol.main(argv) == EXIT_ERROR
    assert not out.exists()
    assert utility_protocol.main(["--demo", str(demo_dir), "--out", str(out), "--seeds", "0", "0"]) == EXIT_ERROR
    assert not out.exists()


# ============================================================================ tracebacks -> one line
def _handmade(path: Path, hparams: dict, state: dict | None = None) -> Path:
    import torch

    torch.save({"hyper_parameters": hparams, "state_dict": state or {"w": torch.zeros(1)}}, path)
    return path


def test_item22_generate_labels_bad_device_inputs_and_checkpoints_are_one_line(
    tiny_label_model: TinyLabelModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    afile = tmp_path / "file.txt"
    afile.write_text("x")
    broken = _handmade(tmp_path / "broken.ckpt", {"label_ae_hparams": {"label_nc": 4}})
    cases = [
        (["--device", "meta"], "only cpu and cuda"),
        (["--condition-from", str(tmp_path / "missing")], "not a folder of label maps"),
        (["--condition-from", str(afile)], "not a folder of label maps"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU"))
    for extra, needle in cases:
        assert _labels(tiny_label_model, tmp_path / "out", *extra) == EXIT_ERROR, extra
        assert needle in _errors(caplog)[-1], (extra, _errors(caplog))
    from scripts.generate_labels import main

    assert main(["--ckpt", str(broken), "--out", str(tmp_path / "out")]) == EXIT_ERROR
    assert "not a usable label diffusion checkpoint" in _errors(caplog)[-1]
    assert not (tmp_path / "out").exists()


def test_item23_generate_pairs_bad_device_and_checkpoints_are_one_line(
    tiny_label_model: TinyLabelModel, tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from scripts.generate_pairs import main

    out = tmp_path / "pairs"
    handmade = _handmade(tmp_path / "hand.ckpt", {"label_nc": 4})
    lab, img = str(tiny_label_model.label_diffusion), str(tiny_model.diffusion)
    cases = [
        ([lab, str(handmade)], [], "not a Med-LSDM checkpoint"),
        ([str(handmade), img], [], "not a Med-LSDM checkpoint"),
        ([img, lab], [], "--label-ckpt"),  # swapped
    ]
    if not torch.cuda.is_available():
        cases.append(([lab, img], ["--device", "cuda"], "no CUDA GPU"))
    results = []
    for (label_ckpt, image_ckpt), extra, _ in cases:
        caplog.clear()
        try:
            rc = main(["--label-ckpt", label_ckpt, "--image-ckpt", image_ckpt, "--out", str(out), *extra])
        except Exception as err:  # a traceback on the command line (the old --device cuda)
            rc = f"raised {type(err).__name__}"
        results.append((rc, _errors(caplog)))
    # behaviour first (exit 2, one line, for every case), then what the line says
    assert all(rc == EXIT_ERROR and len(errors) == 1 for rc, errors in results), results
    for (_, _, needle), (_, errors) in zip(cases, results):
        assert needle in errors[0], errors
    assert not out.exists()


def test_item26_demo_out_file_link_and_nan_minutes_are_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from scripts import demo

    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert demo.main(["--out", str(afile)]) == EXIT_ERROR
    assert "is an existing file" in _errors(caplog)[-1]
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert demo.main(["--out", str(link), "--overwrite"]) == EXIT_ERROR
    assert "symbolic link" in _errors(caplog)[-1]
    assert demo.main(["--out", str(tmp_path / "new"), "--cap-minutes", "nan"]) == EXIT_ERROR
    assert "not a finite number" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"] and not (tmp_path / "new").exists()


# ======================================================================================== huge inputs
def test_item16_the_voxel_limit_applies_to_the_resampled_grid_before_it_is_allocated(
    tiny_model: TinyModel, write_label, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np

    huge_voxels = np.diag([150.0, 200.0, 200.0, 1.0])  # 16^3 voxels of 15-20 cm: 1200 x 2133 x 2133 at 1.5-2 mm
    labels = write_label(tmp_path / "in" / "coarse.nii.gz", np.ones((16, 16, 16), dtype=np.int16), huge_voxels)
    assert labels.stat().st_size < 2000
    out = tmp_path / "out"
    assert cli(tiny_model, labels, out) == EXIT_ERROR
    assert "over the limit" in _errors(caplog)[-1] and "--no-resample" in _errors(caplog)[-1]
    assert not out.exists()  # a refused run leaves no empty --out


def test_item17_label_maps_stay_in_a_small_integer_type(tmp_path: Path) -> None:
    import numpy as np

    from dataset.nifti import load_label, save_nifti
    from diffusion.generation.pipeline import load_label_volumes

    small = save_nifti(tmp_path / "small.nii.gz", np.arange(8, dtype=np.int32).reshape(2, 2, 2) % 4, np.eye(4),
                       dtype=np.int32)  # fmt: skip
    assert load_label_volumes([small], 4)[0].label.dtype == np.int16  # not int64: 4x less memory
    wide = save_nifti(tmp_path / "wide.nii.gz", np.full((2, 2, 2), 40000, dtype=np.int32), np.eye(4), dtype=np.int32)
    assert load_label(wide, compact=True)[0].dtype == np.int32
    assert load_label(wide)[0].dtype == np.int64  # the default for dataset samples is unchanged


# ========================================================================================= leftovers
def test_leftover_a_failed_driver_takes_its_background_stage_with_it(tmp_path: Path) -> None:
    import sys
    import time

    from train import stages

    marker = tmp_path / "written_after_the_driver_failed"
    sleeper = [sys.executable, "-c", f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).touch()"]

    @stages.report_failure
    def driver(argv: list[str] | None = None) -> int:
        stages.Background(lambda: stages.run(sleeper, [], tmp_path / "background.log"))
        time.sleep(0.5)  # the background stage has started
        raise stages.StageFailed("stage failed with exit status 1: python -m train.train_vqgan", 1)

    assert driver([]) == 1
    time.sleep(4)
    assert not marker.exists()  # the child died with the driver instead of writing as an orphan


def test_leftover_every_ranks_rng_state_is_saved_and_each_rank_resumes_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from train.callbacks import ResumeRNGState

    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    other = {"torch": torch.zeros(1), "rank": 0}

    def gather(out: list, obj: object) -> None:  # what rank 0 and rank 1 contribute
        out[0], out[1] = other, obj

    monkeypatch.setattr(dist, "all_gather_object", gather)
    saved = ResumeRNGState().state_dict()
    assert saved["per_rank"][0] is other and torch.equal(saved["per_rank"][1]["torch"], torch.get_rng_state())
    resumed = ResumeRNGState()
    resumed.load_state_dict(saved)
    assert resumed._pending is saved["per_rank"][1]  # rank 1 resumes its own streams, not rank 0's
