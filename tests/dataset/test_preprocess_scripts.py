"""End-to-end preprocessing: each script run as a real subprocess on fake raw data in that dataset's layout.

Checks manifests, disjoint patient splits, seeded reproducibility, label remapping, HU-window invertibility,
block affines and overwrite refusal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dataset.intensity import invert
from dataset.nifti import load_image, load_label, load_pair, shift_affine
from scripts import preprocess_autopet, preprocess_duke
from tests.dataset.fakes import write_autopet_raw, write_duke_raw, write_synthrad_raw

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--block-size", "8", "12", "12", "--val-frac", "0.25", "--test-frac", "0.25", "--no-progress"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path, list[str]]]:
    """Fake raw data of all three datasets, preprocessed by the three scripts running concurrently.

    Each process spends most of its time importing torch; starting them together keeps the suite fast.
    """
    root = tmp_path_factory.mktemp("scripts")
    ids = {
        "autopet": write_autopet_raw(root / "autopet_raw"),
        "synthrad2023": write_synthrad_raw(root / "pelvis", root / "synth_labels"),
        "duke": write_duke_raw(root / "duke_raw", four_d=True),
    }
    procs = [
        _start(
            [
                "scripts/preprocess_autopet.py",
                "--src",
                str(root / "autopet_raw"),
                "--dst",
                str(root / "autopet_out"),
                *SMALL,
            ]
        ),
        _start(
            [
                "-m",
                "scripts.preprocess_synthrad2023",
                "--src",
                str(root / "pelvis"),
                "--labels",
                str(root / "synth_labels"),
                "--dst",
                str(root / "synthrad2023_out"),
                *SMALL,
            ]
        ),
        _start(
            [
                "scripts/preprocess_duke.py",
                "--src",
                str(root / "duke_raw"),
                "--dst",
                str(root / "duke_out"),
                "--block-size",
                "16",
                "16",
                "16",
                "--val-frac",
                "0.3",
                "--test-frac",
                "0.3",
                "--no-progress",
            ]
        ),
    ]
    for proc in procs:
        _wait(proc)
    return {
        "autopet": (root / "autopet_raw", root / "autopet_out", ids["autopet"]),
        "synthrad2023": (root / "pelvis", root / "synthrad2023_out", ids["synthrad2023"]),
        "duke": (root / "duke_raw", root / "duke_out", ids["duke"]),
    }


def _manifest(dst: Path) -> dict:
    return json.loads((dst / "manifest.json").read_text())


def _without_data_dir(manifest: dict) -> dict:
    """The manifest with its run-specific ``blocks-<id>`` folder name taken out (for comparing two runs)."""
    out = {k: v for k, v in manifest.items() if k != "data_dir"}
    prefix = manifest["data_dir"] + "/"
    out["entries"] = [
        {**e, "image": e["image"].removeprefix(prefix), "label": e["label"].removeprefix(prefix)}
        for e in manifest["entries"]
    ]
    return out


def _check_splits(manifest: dict, patients: list[str]) -> None:
    by_split = {s: {e["patient"] for e in manifest["entries"] if e["split"] == s} for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert sorted(p for ps in manifest["splits"].values() for p in ps) == sorted(patients)
    assert all(by_split[s] <= set(manifest["splits"][s]) for s in by_split)
    assert all(len(manifest["splits"][s]) >= 1 for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def autopet(runs) -> tuple[Path, Path, list[str]]:
    return runs["autopet"]


def test_autopet_manifest_and_disjoint_splits(autopet) -> None:
    raw, dst, ids = autopet
    manifest = _manifest(dst)
    assert manifest["dataset"] == "autopet" and manifest["label_nc"] == 37 and len(manifest["class_names"]) == 37
    assert manifest["intensity"] == {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0, "invertible": True}
    _check_splits(manifest, [i.rsplit("_", 1)[0] for i in ids])  # AutoPET naming: PETCT_<patient>_<study>
    assert sum(manifest["counts"].values()) == len(manifest["entries"]) > 0
    for entry in manifest["entries"]:
        image, label, _ = load_pair(dst / entry["image"], dst / entry["label"], label_nc=37)
        assert image.shape == (8, 12, 12) and image.min() >= -1 and image.max() <= 1
        assert set(np.unique(label)) <= {0, 3, 17, 36}  # shipped AutoPET table is the identity
    assert manifest["cases"][ids[0]]["source"]["image"] == f"imagesTr/{ids[0]}_0001.nii.gz"


def test_autopet_blocks_keep_world_coordinates_and_invert_to_hu(autopet) -> None:
    raw, dst, _ = autopet
    entry = _manifest(dst)["entries"][-1]
    src = nib.load(str(raw / "imagesTr" / f"{entry['case']}_0001.nii.gz"))
    hu_src, src_affine = load_image(raw / "imagesTr" / f"{entry['case']}_0001.nii.gz")
    block, block_affine = load_image(dst / entry["image"])
    od, oh, ow = entry["offset"]
    np.testing.assert_allclose(block_affine, shift_affine(src.affine, entry["offset"]), atol=1e-4)
    d, h, w = 3, 5, 7  # a voxel inside both
    np.testing.assert_allclose(block_affine @ [h, w, d, 1], src_affine @ [h + oh, w + ow, d + od, 1], atol=1e-3)
    expected = np.clip(hu_src[od : od + 8, max(oh, 0) : oh + 12, max(ow, 0) : ow + 12], -1000, 1000)
    got = invert(block, {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000})
    np.testing.assert_allclose(got[: expected.shape[0], : expected.shape[1], : expected.shape[2]], expected, atol=0.1)
    assert (hu_src > 1000).any()  # the fake bone really was outside the window


def test_autopet_seeded_reproducibility_in_process(autopet, tmp_path: Path) -> None:
    raw, dst, _ = autopet
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(tmp_path / "again"), *SMALL]) == 0
    first, second = _manifest(dst), _manifest(tmp_path / "again")
    assert _without_data_dir(first) == _without_data_dir(second)
    for ea, eb in zip(first["entries"][:3], second["entries"][:3]):
        a, b = load_image(dst / ea["image"])[0], load_image(tmp_path / "again" / eb["image"])[0]
        np.testing.assert_array_equal(a, b)
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(tmp_path / "seed9"), "--seed", "9", *SMALL]) == 0
    other = _manifest(tmp_path / "seed9")
    assert other["options"]["seed"] == 9 and sum(other["counts"].values()) == sum(first["counts"].values())


def test_autopet_refuses_to_overwrite(autopet, caplog) -> None:
    raw, dst, _ = autopet
    before = (dst / "manifest.json").stat().st_mtime_ns
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(dst), *SMALL]) == 2
    assert "--overwrite" in caplog.text
    assert (dst / "manifest.json").stat().st_mtime_ns == before


def test_overwrite_replaces_output(autopet, tmp_path: Path) -> None:
    raw, _, _ = autopet
    dst = tmp_path / "out"
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(dst), *SMALL]) == 0
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(dst), "--overwrite", "--seed", "3", *SMALL]) == 0
    assert _manifest(dst)["options"]["seed"] == 3
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no staging leftovers
    files = {p.relative_to(dst).as_posix() for p in dst.rglob("*.nii.gz")}
    listed = {e[k] for e in _manifest(dst)["entries"] for k in ("image", "label")}
    assert files == listed  # old blocks are gone, no orphans


def test_label_remap_through_custom_table(autopet, tmp_path: Path, caplog) -> None:
    raw, _, _ = autopet
    table = tmp_path / "table.yaml"
    table.write_text("name: autopet_coarse\nclasses: [background, organ, lesion]\nremap: {0: 0, 3: 1, 17: 1, 36: 2}\n")
    dst = tmp_path / "coarse"
    assert preprocess_autopet.main(["--src", str(raw), "--dst", str(dst), "--label-table", str(table), *SMALL]) == 0
    manifest = _manifest(dst)
    assert manifest["class_names"] == ["background", "organ", "lesion"]
    entry = manifest["entries"][0]
    src_label, _ = load_label(raw / "imagesTr" / f"{entry['case']}_0002.nii.gz")
    block, _ = load_label(dst / entry["label"], label_nc=3)
    od, oh, ow = entry["offset"]
    src_block = src_label[od : od + 8, oh : oh + 12, ow : ow + 12]
    lut = np.zeros(37, dtype=np.int64)
    lut[[3, 17, 36]] = [1, 1, 2]
    np.testing.assert_array_equal(
        block[: src_block.shape[0], : src_block.shape[1], : src_block.shape[2]], lut[src_block]
    )
    # A source value missing from the table stops the run and names file and value.
    table.write_text("name: partial\nclasses: [background, organ]\nremap: {0: 0, 3: 1, 17: 1}\n")
    assert (
        preprocess_autopet.main(["--src", str(raw), "--dst", str(tmp_path / "x"), "--label-table", str(table), *SMALL])
        == 2
    )
    assert "_0002.nii.gz: label values [36] are not in the 'partial' label table" in caplog.text


def test_synthrad2023_module_form(runs) -> None:
    _, dst, ids = runs["synthrad2023"]
    manifest = _manifest(dst)
    assert manifest["dataset"] == "synthrad2023" and manifest["modality"] == "mr" and manifest["label_nc"] == 31
    _check_splits(manifest, ids)  # the overview/ folder was not taken for a patient
    record = manifest["cases"][ids[0]]["intensity_record"]
    assert record["p_upper"] > record["p_lower"] > 0  # per-volume percentiles in MR units
    labels = set()
    for entry in manifest["entries"]:
        image, label, _ = load_pair(dst / entry["image"], dst / entry["label"], label_nc=31)
        assert image.min() >= -1 and image.max() <= 1
        labels |= set(np.unique(label).tolist())
    assert labels == {0, 22, 26, 30}


def test_duke_merges_4d_segments_keeping_dense_tissue(runs) -> None:
    _, dst, ids = runs["duke"]
    manifest = _manifest(dst)
    assert manifest["class_names"] == ["background", "breast", "fibroglandular_tissue", "vessels"]
    _check_splits(manifest, ids)
    assert len(manifest["entries"]) == len(ids)  # one padded 16^3 block per (16, 12, 10) volume
    for entry in manifest["entries"]:
        label, _ = load_label(dst / entry["label"], label_nc=4)
        assert set(np.unique(label)) == {0, 1, 2, 3}  # dense tissue (2) survives, unlike the reference


def test_duke_3d_and_4d_encodings_give_the_same_labels(tmp_path: Path) -> None:
    write_duke_raw(tmp_path / "raw4", n_patients=3, four_d=True)
    write_duke_raw(tmp_path / "raw3", n_patients=3, four_d=False)
    args = ["--block-size", "16", "16", "16", "--val-frac", "0.3", "--test-frac", "0.3", "--no-progress"]
    assert preprocess_duke.main(["--src", str(tmp_path / "raw4"), "--dst", str(tmp_path / "o4"), *args]) == 0
    assert preprocess_duke.main(["--src", str(tmp_path / "raw3"), "--dst", str(tmp_path / "o3"), *args]) == 0
    m4, m3 = _manifest(tmp_path / "o4"), _manifest(tmp_path / "o3")
    for e4, e3 in zip(m4["entries"], m3["entries"]):
        np.testing.assert_array_equal(
            load_label(tmp_path / "o4" / e4["label"])[0], load_label(tmp_path / "o3" / e3["label"])[0]
        )
