"""Issue 20 on the evaluation tools: silent wrong numbers, late refusals, tracebacks, absolute paths in reports.

Each test reproduces one numbered defect of the issue with 8^3 phantoms and ``main(argv)`` in-process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dataset.files import write_run_record
from tests.evaluation.conftest import export_phantoms

EXIT_ERROR = 2
NAMES = ["background", "outer", "middle", "inner"]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/``, ``labels/`` (4 phantoms, [-1, 1]) and ``fake/`` (the same images as ``<id>_s0``, recorded)."""
    root = tmp_path_factory.mktemp("phantoms")
    export_phantoms("train", root, 4)
    export_phantoms("train", root / "gen", 4, suffix="_s0")
    fake = root / "gen" / "images"
    write_run_record(fake / "generation.json", {"command": "generate", "data_range": [-1.0, 1.0],
                                                "outputs": sorted(p.name for p in fake.glob("*.nii.gz"))})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def segmenter(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evaluation.segmentation import main

    out = tmp_path_factory.mktemp("seg") / "seg.pt"
    argv = [
        "train",
        "--images",
        str(phantoms / "images"),
        "--labels",
        str(phantoms / "labels"),
        "--num-classes",
        "4",
        "--channels",
        "4",
        "8",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--data-range",
        "-1",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0  # fmt: skip
    return out


def _experiment(phantoms: Path, out: Path, *extra: str) -> list[str]:
    img, lab = str(phantoms / "images"), str(phantoms / "labels")
    return ["--train-images", img, "--train-labels", lab, "--class-names", *NAMES, "--regimes", "1",
            "--steps", "1", "--out", str(out), *extra]  # fmt: skip


# ------------------------------------------------------------------------- 9. silent total clipping
def test_item09_a_data_range_that_clips_every_voxel_is_refused(
    phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from evaluation import segmenter_curve, utility

    img, lab = str(phantoms / "images"), str(phantoms / "labels")
    others = ["--test-images", img, "--test-labels", lab, "--synth-images", img, "--new-images", img]
    argv = _experiment(phantoms, tmp_path / "u.json", "--data-range", "5", "6", *others, "--new-labels", lab)
    assert utility.main(argv) == EXIT_ERROR
    assert "every voxel lies outside the stated data range [5, 6]" in _errors(caplog)[-1]
    argv = _experiment(phantoms, tmp_path / "c.json", "--data-range", "5", "6", "--val-images", img,
                       "--val-labels", lab)  # fmt: skip
    assert segmenter_curve.main(argv) == EXIT_ERROR
    assert "every voxel lies outside" in _errors(caplog)[-1]
    assert not list(tmp_path.iterdir())


def test_item09_label_metrics_adherence_refuses_total_clipping_and_reports_partial(
    phantoms: Path, segmenter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from evaluation.label_metrics import main

    base = ["--fake", str(phantoms / "labels"), "--real", str(phantoms / "labels"), "--class-names", *NAMES,
            "--segmenter", str(segmenter), "--fake-images", str(phantoms / "images")]  # fmt: skip
    assert main([*base, "--data-range", "5", "6", "--out", str(tmp_path / "a.json")]) == EXIT_ERROR
    assert "every voxel lies outside" in _errors(caplog)[-1]
    assert main([*base, "--data-range", "-0.5", "0.5", "--out", str(tmp_path / "b.json")]) == 0
    intensity = json.loads((tmp_path / "b.json").read_text())["results"]["adherence"]["intensity"]
    assert intensity["clipped_voxels"] > 0 and intensity["clip"] is True


# --------------------------------------------------------------------------- 10. --lr inf
def test_item10_segmentation_refuses_a_non_finite_learning_rate(
    phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from evaluation.segmentation import main

    out = tmp_path / "seg.pt"
    argv = ["train", "--images", str(phantoms / "images"), "--labels", str(phantoms / "labels"), "--num-classes",
            "4", "--steps", "1", "--data-range", "-1", "1", "--out", str(out), "--lr", "inf"]  # fmt: skip
    assert main(argv) == EXIT_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--lr: 'inf' is not a finite number" in err[0]
    assert not out.exists()


# ----------------------------------------------------------------------- 11. repeated class names
def test_item11_repeated_class_names_are_refused(
    phantoms: Path, segmenter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from evaluation import label_metrics, segmentation

    labels = str(phantoms / "labels")
    twice = ["background", "outer", "outer", "inner"]
    argv = ["--fake", labels, "--real", labels, "--class-names", *twice, "--out", str(tmp_path / "m.json")]
    assert label_metrics.main(argv) == EXIT_ERROR
    assert "--class-names lists 'outer' twice" in _errors(caplog)[-1]
    argv = ["evaluate", "--model", str(segmenter), "--labels", labels, "--real", str(phantoms / "images"),
            "--class-names", *twice, "--data-range", "-1", "1", "--out", str(tmp_path / "d.json")]  # fmt: skip
    assert segmentation.main(argv) == EXIT_ERROR
    assert "--class-names lists 'outer' twice" in _errors(caplog)[-1]
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ 14. repeated seeds
def test_item14_repeated_seeds_are_refused(phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from evaluation import utility

    img, lab = str(phantoms / "images"), str(phantoms / "labels")
    argv = _experiment(phantoms, tmp_path / "u.json", "--data-range", "-1", "1", "--test-images", img,
                       "--test-labels", lab, "--synth-images", img, "--new-images", img, "--new-labels", lab,
                       "--seeds", "0", "0")  # fmt: skip
    assert utility.main(argv) == EXIT_ERROR
    assert "--seeds lists 0 twice" in _errors(caplog)[-1]


# ----------------------------------------------------------------- 15. no absolute path in a report
def test_item15_compute_metrics_reports_hold_no_absolute_path(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation.compute_metrics import main

    monkeypatch.chdir(phantoms)  # inputs as relative paths, as a user types them
    out = tmp_path / "report" / "metrics.json"
    argv = ["--real", "images", "--fake", "gen/images", "--labels", "labels", "--real-range", "-1", "1",
            "--metrics", "ssim,psnr", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    for text in (out.read_text(), out.with_suffix(".md").read_text()):
        assert str(phantoms) not in text and str(Path.home()) not in text
    assert json.loads(out.read_text())["intensity"]["fake"]["source"] == "gen/images/generation.json (data_range)"


# -------------------------------------------------------------------------------- 20. refused late
def test_item20_label_metrics_checks_the_adherence_options_before_computing(
    phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation import label_metrics

    def computed(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed before the options were checked")

    monkeypatch.setattr(label_metrics, "evaluate", computed)
    labels = str(phantoms / "labels")
    argv = ["--fake", labels, "--real", labels, "--class-names", *NAMES, "--segmenter", str(tmp_path / "seg.pt"),
            "--data-range", "-1", "1", "--out", str(tmp_path / "m.json")]  # fmt: skip
    assert label_metrics.main(argv) == EXIT_ERROR
    assert "--segmenter needs --fake-images" in _errors(caplog)[-1]


# ----------------------------------------------------------------------- 24, 25. one line, not a traceback
def test_item24_corrupt_segmenters_and_a_missing_gpu_are_one_line(
    phantoms: Path, segmenter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from evaluation import label_metrics, segmentation

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(200))
    damaged = tmp_path / "damaged.pt"
    torch.save({"format": torch.load(segmenter, weights_only=True)["format"], "hparams": {}}, damaged)
    labels, images = str(phantoms / "labels"), str(phantoms / "images")
    for model, needle in ((corrupt, "not a readable PyTorch checkpoint"), (damaged, "damaged segmenter checkpoint")):
        argv = ["evaluate", "--model", str(model), "--labels", labels, "--real", images, "--data-range", "-1", "1",
                "--out", str(tmp_path / "d.json")]  # fmt: skip
        assert segmentation.main(argv) == EXIT_ERROR
        assert needle in _errors(caplog)[-1]
        argv = ["--fake", labels, "--real", labels, "--class-names", *NAMES, "--segmenter", str(model),
                "--fake-images", images, "--data-range", "-1", "1", "--out", str(tmp_path / "m.json")]  # fmt: skip
        assert label_metrics.main(argv) == EXIT_ERROR
        assert needle in _errors(caplog)[-1]
    if not torch.cuda.is_available():
        argv = ["evaluate", "--model", str(segmenter), "--labels", labels, "--real", images, "--data-range", "-1",
                "1", "--device", "cuda", "--out", str(tmp_path / "d.json")]  # fmt: skip
        assert segmentation.main(argv) == EXIT_ERROR
        assert "no CUDA GPU" in _errors(caplog)[-1]
    assert not (tmp_path / "d.json").exists() and not (tmp_path / "m.json").exists()


def test_item25_segmenter_curve_refuses_a_nan_tolerance(
    phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from evaluation import segmenter_curve

    img, lab = str(phantoms / "images"), str(phantoms / "labels")
    argv = _experiment(phantoms, tmp_path / "c.json", "--data-range", "-1", "1", "--val-images", img,
                       "--val-labels", lab, "--tolerance", "nan")  # fmt: skip
    assert segmenter_curve.main(argv) == EXIT_ERROR
    assert "--tolerance: 'nan' is not a finite number" in capsys.readouterr().err


# ------------------------------------------------------------------- 3. predictions through a link
def test_item03_segmentation_predictions_never_write_through_a_link(
    phantoms: Path, segmenter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from evaluation import segmentation

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "real").symlink_to(elsewhere, target_is_directory=True)
    argv = ["evaluate", "--model", str(segmenter), "--labels", str(phantoms / "labels"), "--real",
            str(phantoms / "images"), "--data-range", "-1", "1", "--predictions", str(preds),
            "--out", str(tmp_path / "d.json")]  # fmt: skip
    assert segmentation.main(argv) == EXIT_ERROR
    assert "symbolic link" in _errors(caplog)[-1]
    assert list(elsewhere.iterdir()) == []
