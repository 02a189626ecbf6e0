"""Issue 20: every entry point refuses a NaN, a zero count and a symbolic-link output in one line with exit 2.

Each case runs the command's ``main(argv)`` in-process with otherwise valid arguments and checks: exit status 2,
no traceback, the one error line names the option at fault, nothing written through the link (its target stays
empty) and no output folder left behind. A command without a number option (or without a count) has no such case.
:func:`test_every_command_line_tool_is_listed` finds every command-line tool of ``scripts/``, ``evaluation/`` and
``train/`` so a new one cannot be left out.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.evaluation.conftest import export_phantoms

CASES = ("nan", "zero", "link")


def _fake_demo(root: Path) -> Path:
    from scripts import utility_protocol

    demo = root / "demo"
    for name in utility_protocol.check_demo(demo):
        path = demo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x") if "." in path.name else path.mkdir()
    return demo


def _phantoms(root: Path) -> tuple[str, str]:
    if not (root / "data").exists():
        export_phantoms("train", root / "data", 2)
    return str(root / "data" / "images"), str(root / "data" / "labels")


# entry point -> (module, argv builder(tmp, out, models)) and the option values of each case
Build = Callable[[Path, Path, dict], list[str]]


def _generate(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--ckpt", str(m["image"].diffusion), "--labels", str(m["maps"].small), "--out", str(out)]


def _labels(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--ckpt", str(m["label"].label_diffusion), "--out", str(out)]


def _pairs(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--label-ckpt", str(m["label"].label_diffusion), "--image-ckpt", str(m["image"].diffusion),
            "--out", str(out)]  # fmt: skip


def _experiment(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return ["--train-images", img, "--train-labels", lab, "--class-names", "bg", "a", "b", "c",
            "--data-range", "-1", "1", "--regimes", "1", "--steps", "1", "--out", str(out)]  # fmt: skip


def _utility(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return [*_experiment(tmp, out, m), "--test-images", img, "--test-labels", lab, "--synth-images", img,
            "--new-images", img, "--new-labels", lab]  # fmt: skip


def _curve(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return [*_experiment(tmp, out, m), "--val-images", img, "--val-labels", lab]


def _label_metrics(tmp: Path, out: Path, m: dict) -> list[str]:
    _, lab = _phantoms(tmp)
    return ["--fake", lab, "--real", lab, "--class-names", "bg", "a", "b", "c", "--out", str(out)]


def _compute_metrics(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return ["--real", img, "--fake", img, "--data-range", "-1", "1", "--metrics", "psnr", "--out", str(out)]


def _seg_train(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return ["train", "--images", img, "--labels", lab, "--num-classes", "4", "--data-range", "-1", "1",
            "--out", str(out)]  # fmt: skip


def _inspect(tmp: Path, out: Path, m: dict) -> list[str]:
    _phantoms(tmp)
    return [str(tmp / "data"), "--name", "mine", "--out", str(out)]


def _preprocess(tmp: Path, out: Path, m: dict) -> list[str]:
    (tmp / "raw").mkdir(exist_ok=True)
    return ["--src", str(tmp / "raw"), "--dst", str(out)]


def _edit(tmp: Path, out: Path, m: dict) -> list[str]:
    """A scan in the model's units on the grid of a label map, and a region to regenerate on it."""
    import nibabel as nib

    lab = nib.load(m["maps"].small)
    label = np.asarray(lab.dataobj)
    scan = tmp / "scan.nii.gz"
    nib.save(nib.Nifti1Image((label / 3.0 - 0.5).astype(np.float32), lab.affine), scan)
    region = np.zeros(label.shape, dtype=np.uint8)
    region[3:6, 3:6, 2:4] = 1
    nib.save(nib.Nifti1Image(region, lab.affine), tmp / "region.nii.gz")
    return ["--ckpt", str(m["image"].diffusion), "--image", str(scan), "--labels", str(m["maps"].small),
            "--region", str(tmp / "region.nii.gz"), "--device", "cpu", "--out", str(out)]  # fmt: skip


def _edit_metrics(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return ["--ckpt", str(m["image"].diffusion), "--images", img, "--labels", lab, "--data-range", "-1", "1",
            "--device", "cpu", "--out", str(out)]  # fmt: skip


def _class_intensity(tmp: Path, out: Path, m: dict) -> list[str]:
    img, lab = _phantoms(tmp)
    return ["--real", img, "--fake", img, "--labels", lab, "--class-names", "bg", "a", "b", "c", "--out", str(out)]


def _fetch_weights(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--only", "lpips", "--dest", str(out)]


def _demo(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--out", str(out)]


def _protocol(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--demo", str(_fake_demo(tmp)), "--out", str(out)]


def _benchmark(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--device", "cpu", "--quick", "--skip", "training", "sampling", "generation", "--out", str(out)]


def _gpu_check(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--tiny", "--device", "cpu", "--parts", "denoiser", "--no-compile", "--out", str(out)]


#: name: (module, argv builder, NaN option, zero-count option, output kind: "dir" or the report file's suffix);
#: ``None``: the command has no option of that kind
ENTRIES: dict[str, tuple[str, Build, list[str] | None, list[str] | None, str]] = {
    "generate": ("scripts.generate", _generate, ["--guidance", "nan"], ["--num-samples", "0"], "dir"),
    "generate_labels": ("scripts.generate_labels", _labels, ["--guidance", "nan"], ["--num-samples", "0"], "dir"),
    "generate_pairs": ("scripts.generate_pairs", _pairs, ["--condition", "outer=nan"], ["--num-samples", "0"], "dir"),
    "edit": ("scripts.edit", _edit, ["--guidance", "nan"], ["--steps", "0"], "dir"),
    "demo": ("scripts.demo", _demo, ["--cap-minutes", "nan"], ["--label-maps", "0"], "dir"),
    "utility_protocol": ("scripts.utility_protocol", _protocol, ["--cap-minutes", "nan"], ["--pairs", "0"],
                         "dir"),
    "inspect_dataset": ("scripts.inspect_dataset", _inspect, ["--multiple", "nan", "8", "8"],
                        ["--multiple", "0", "8", "8"], ".yaml"),
    "preprocess_autopet": ("scripts.preprocess_autopet", _preprocess, ["--val-frac", "nan"],
                           ["--blocks-per-volume", "0"], "dir"),
    "preprocess_duke": ("scripts.preprocess_duke", _preprocess, ["--test-frac", "inf"], ["--blocks-per-volume", "0"],
                        "dir"),
    "preprocess_synthrad2023": ("scripts.preprocess_synthrad2023", _preprocess, ["--val-frac", "nan"],
                                ["--blocks-per-volume", "0"], "dir"),
    "fetch_weights": ("scripts.fetch_weights", _fetch_weights, None, None, "dir"),
    "compute_metrics": ("evaluation.compute_metrics", _compute_metrics, ["--real-range", "nan", "1"],
                        ["--slice-step", "0"], ".json"),
    "label_metrics": ("evaluation.label_metrics", _label_metrics, ["--copy-threshold", "nan"],
                      ["--copy-threshold", "0"], ".json"),
    "utility": ("evaluation.utility", _utility, ["--data-range", "nan", "1"], ["--jobs", "0"], ".json"),
    "segmenter_curve": ("evaluation.segmenter_curve", _curve, ["--tolerance", "nan"], ["--eval-every", "0"], ".json"),
    "segmentation": ("evaluation.segmentation", _seg_train, ["--lr", "nan"], ["--steps", "0"], ".pt"),
    "edit_metrics": ("evaluation.edit_metrics", _edit_metrics, ["--margin-mm", "nan"], ["--steps", "0"], ".json"),
    "class_intensity": ("evaluation.class_intensity", _class_intensity, None, None, ".json"),
    "benchmark": ("scripts.benchmark", _benchmark, ["--max-seconds", "nan"], ["--repeats", "0"], "dir"),
    "gpu_check": ("scripts.gpu_check", _gpu_check, ["--warmup", "nan"], ["--repeats", "0"], "dir"),
}  # fmt: skip
TRAIN_ENTRIES = ("train_vqgan", "train_diffusion", "train_label_ae", "train_label_diffusion", "train_distill")
#: Command-line tools not (yet) in the cases above, each with the reason; the list test keeps this honest.
NOT_COVERED: dict[str, str] = {}
MODELS = {  # which tiny checkpoints (tests.tiny_checkpoints) and label maps an entry's arguments name
    "generate": ("image", "maps"), "generate_pairs": ("image", "maps", "label"), "generate_labels": ("label",),
    "edit": ("image", "maps"), "edit_metrics": ("image",),
}  # fmt: skip
FIXTURES = {"image": "tiny_model", "maps": "label_maps", "label": "tiny_label_model"}


def _cases() -> list[tuple[str, str]]:
    return [(name, case) for name, entry in sorted(ENTRIES.items()) for case in CASES
            if case == "link" or entry[2 + CASES.index(case)] is not None]  # fmt: skip


def _named_option(case: str, option: list[str] | None) -> str | None:
    """The option an error line must name (``--guidance`` of ``--guidance nan``); None for the link case."""
    return None if case == "link" or option is None else option[0].lstrip("-")


def test_every_command_line_tool_is_listed() -> None:
    """Every module of scripts/, evaluation/ and train/ with a ``__main__`` block is a case here (or says why not)."""
    root = Path(__file__).resolve().parents[2]
    found = set()
    for folder in ("scripts", "evaluation", "train"):
        for path in sorted((root / folder).rglob("*.py")):
            if re.search(r"^if __name__ == .__main__.:", path.read_text(encoding="utf-8"), re.M):
                found.add(".".join(path.relative_to(root).with_suffix("").parts))
    listed = {e[0] for e in ENTRIES.values()} | {f"train.{t}" for t in TRAIN_ENTRIES} | set(NOT_COVERED)
    assert found == listed, (sorted(found - listed), sorted(listed - found))


@pytest.mark.parametrize(("name", "case"), _cases())
def test_every_cli_refuses_nan_zero_and_a_linked_output(
    name: str, case: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    module, build, nan, zero, kind = ENTRIES[name]
    models = {key: request.getfixturevalue(FIXTURES[key]) for key in MODELS.get(name, ())}
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / ("out" if kind == "dir" else f"out{kind}")
    if case == "link":
        out.symlink_to(target if kind == "dir" else target / f"report{kind}", target_is_directory=kind == "dir")
    extra = {"nan": nan, "zero": zero, "link": []}[case] or []
    rc = importlib.import_module(module).main([*build(tmp_path, out, models), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()] + [
        r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    ]
    assert rc == 2, (name, case, err)
    assert "Traceback" not in err and len(lines) == 1, lines
    option = _named_option(case, extra)
    assert option is None or option in lines[0], lines  # refused for this option, not for another reason
    if case == "link":
        assert "link" in lines[0], lines
    assert list(target.iterdir()) == []  # nothing written through the link
    if case != "link":
        assert not out.exists() and not out.is_symlink()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("entry", TRAIN_ENTRIES)
def test_every_training_entry_point_refuses_nan_zero_and_a_linked_run_folder(
    entry: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "run"
    if case == "link":
        out.symlink_to(target, target_is_directory=True)
    extra = {"nan": ["model.lr=nan"], "zero": ["dataset.datamodule.batch_size=0"], "link": []}[case]
    # otherwise valid: the input checkpoints a stage needs (a missing one would be refused instead)
    if entry in ("train_diffusion", "train_distill"):
        tiny = request.getfixturevalue("tiny_model")
        extra.append(f"model.teacher_ckpt={tiny.diffusion}" if entry == "train_distill" else
                     f"model.first_stage_ckpt={tiny.vqgan}")  # fmt: skip
    if entry == "train_label_diffusion":
        extra.append(f"model.label_ae_ckpt={request.getfixturevalue('tiny_label_model').label_ae}")
    monkeypatch.setattr(sys, "argv", [entry, "dataset=synthetic", "trainer=cpu", f"paths.output_dir={out}", *extra,
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"train.{entry}").main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert {"nan": "model.lr=nan", "zero": "batch_size=0", "link": "symbolic link"}[case] in lines[0], lines
    assert not (target / "checkpoints").exists() and not (out / "checkpoints").exists()
    assert list(target.iterdir()) == []
