"""Issue 20: every entry point refuses a NaN, a zero count and a symbolic-link output in one line with exit 2.

Each case runs the command's ``main(argv)`` in-process with otherwise valid arguments and checks: exit status 2,
no traceback, nothing written through the link (its target stays empty) and no output folder left behind.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

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


def _demo(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--out", str(out)]


def _protocol(tmp: Path, out: Path, m: dict) -> list[str]:
    return ["--demo", str(_fake_demo(tmp)), "--out", str(out)]


#: name: (module, argv builder, NaN option, zero-count option, output kind: "dir" or the report file's suffix)
ENTRIES: dict[str, tuple[str, Build, list[str], list[str], str]] = {
    "generate": ("scripts.generate", _generate, ["--guidance", "nan"], ["--num-samples", "0"], "dir"),
    "generate_labels": ("scripts.generate_labels", _labels, ["--guidance", "nan"], ["--num-samples", "0"], "dir"),
    "generate_pairs": ("scripts.generate_pairs", _pairs, ["--condition", "outer=nan"], ["--num-samples", "0"], "dir"),
    "demo": ("scripts.demo", _demo, ["--vqgan-minutes", "nan"], ["--label-maps", "0"], "dir"),
    "utility_protocol": ("scripts.utility_protocol", _protocol, ["--label-ae-minutes", "nan"], ["--pairs", "0"],
                         "dir"),
    "inspect_dataset": ("scripts.inspect_dataset", _inspect, ["--multiple", "nan", "8", "8"],
                        ["--multiple", "0", "8", "8"], ".yaml"),
    "preprocess_autopet": ("scripts.preprocess_autopet", _preprocess, ["--val-frac", "nan"],
                           ["--blocks-per-volume", "0"], "dir"),
    "compute_metrics": ("evaluation.compute_metrics", _compute_metrics, ["--real-range", "nan", "1"],
                        ["--slice-step", "0"], ".json"),
    "label_metrics": ("evaluation.label_metrics", _label_metrics, ["--copy-threshold", "nan"],
                      ["--copy-threshold", "0"], ".json"),
    "utility": ("evaluation.utility", _utility, ["--data-range", "nan", "1"], ["--jobs", "0"], ".json"),
    "segmenter_curve": ("evaluation.segmenter_curve", _curve, ["--tolerance", "nan"], ["--eval-every", "0"], ".json"),
    "segmentation": ("evaluation.segmentation", _seg_train, ["--lr", "nan"], ["--steps", "0"], ".pt"),
}  # fmt: skip
TRAIN_ENTRIES = ("train_vqgan", "train_diffusion", "train_label_ae", "train_label_diffusion")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_cli_refuses_nan_zero_and_a_linked_output(
    name: str, case: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    module, build, nan, zero, kind = ENTRIES[name]
    models: dict = {}
    if name in ("generate", "generate_pairs"):
        models["image"] = request.getfixturevalue("tiny_model")
        models["maps"] = request.getfixturevalue("label_maps")
    if name in ("generate_labels", "generate_pairs"):
        models["label"] = request.getfixturevalue("tiny_label_model")
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / ("out" if kind == "dir" else f"out{kind}")
    if case == "link":
        out.symlink_to(target if kind == "dir" else target / f"report{kind}", target_is_directory=kind == "dir")
    extra = {"nan": nan, "zero": zero, "link": []}[case]
    rc = importlib.import_module(module).main([*build(tmp_path, out, models), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()] + [
        r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    ]
    assert rc == 2, (name, case, err)
    assert "Traceback" not in err and len(lines) == 1, lines
    assert list(target.iterdir()) == []  # nothing written through the link
    if case != "link":
        assert not out.exists() and not out.is_symlink()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("entry", TRAIN_ENTRIES)
def test_every_training_entry_point_refuses_nan_zero_and_a_linked_run_folder(
    entry: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "run"
    if case == "link":
        out.symlink_to(target, target_is_directory=True)
    extra = {"nan": ["model.lr=nan"], "zero": ["dataset.datamodule.batch_size=0"], "link": []}[case]
    monkeypatch.setattr(sys, "argv", [entry, "dataset=synthetic", "trainer=cpu", f"paths.output_dir={out}", *extra,
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"train.{entry}").main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not (target / "checkpoints").exists() and not (out / "checkpoints").exists()
