"""Embedded abdominal CT: fetch (local file or a fake pip), checked and safe extraction, merged labels, HU subjects.

Every test runs on the small archive of :mod:`tests.dataset.ct_archive` (same layout as TotalSegmentator's);
none touches the network.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dataset import ct_abdomen
from dataset.contract import DataError, validate_sample
from dataset.ct_abdomen import CTAbdomenDataset, fetch_source, merged_labels
from dataset.intensity import invert_ct_window
from dataset.label_table import load_label_table
from dataset.registry import build_split, plain_data_info
from tests.dataset.ct_archive import ORGANS, RUN_MARKER, SHAPE, phantom, write_archive

SMALL = {"num_subjects": 6, "size": (8, 16, 16), "num_val": 1, "num_test": 1, "seed": 0}
TABLE = load_label_table("ct_abdomen")
CONFIG = Path(__file__).resolve().parents[2] / "config" / "dataset" / "ct_abdomen.yaml"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("dl") / "totalsegmentator-2.18.0.tar.gz")


@pytest.fixture(scope="module")
def built(tmp_path_factory, archive: Path) -> tuple[Path, CTAbdomenDataset]:
    root = tmp_path_factory.mktemp("ct_abdomen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ct_abdomen, "ARCHIVE_SHA256", sha(archive))
        return root, CTAbdomenDataset("all", root, source=str(archive), **SMALL)


def test_subjects_conform_keep_hu_and_3mm_slices(built) -> None:
    _, ds = built
    assert len(ds) == 6 and ds.built and ds.label_nc == 26
    for i in range(len(ds)):
        sample = ds[i]
        validate_sample(sample, 26)
        assert sample["image"].shape == (1, 8, 16, 16)
    sample = ds[0]
    voxel = np.linalg.norm(sample["affine"].numpy()[:3, :3], axis=0)
    assert voxel[2] == pytest.approx(3.0)  # D keeps the slab's 3 mm slices
    # in-plane: the body's bounding box plus 6 mm on each side over 16 voxels
    _, organs, tissues = phantom()
    body = np.argwhere((organs > 0) | (tissues["subcutaneous_fat"] > 0))
    extent_mm = (body.max(0) - body.min(0) + 1)[:2] * 3.0 + 12.0
    assert voxel[:2] == pytest.approx(extent_mm / 16)
    hu, label = invert_ct_window(sample["image"][0]), sample["label"][0]
    for name in ("liver", "spleen"):  # HU kept: only interpolation, no intensity augmentation
        cls = TABLE.class_id({"liver": "liver", "spleen": "spleen"}[name])
        assert float(hu[label == cls].median()) == pytest.approx(ORGANS[name][1], abs=15)
    assert float(hu[label == 0].median()) < -950  # background is air
    assert float(hu[label == TABLE.class_id("vertebrae")].median()) > 150
    manifest = json.loads((ds.cache_dir / "manifest.json").read_text())
    assert manifest["intensity"] == {"kind": "ct_window", "hu_min": -1000.0, "hu_max": 1000.0, "invertible": True}
    assert manifest["class_names"] == list(TABLE.class_names) and manifest["modality"] == "ct"
    assert (ds.cache_dir / "LICENSE-totalsegmentator").read_text().startswith("Apache License")


def test_subjects_are_distinct_and_splits_disjoint(built) -> None:
    root, ds = built
    images = [ds[i]["image"] for i in range(len(ds))]
    for i in range(len(ds)):
        for j in range(i + 1, len(ds)):
            assert float((images[i] - images[j]).abs().mean()) > 0.005
    ids = {s: {e["id"] for e in CTAbdomenDataset(s, root, **SMALL).entries} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_cache_reused_without_fetching_and_rebuilt_from_the_registry(built, archive: Path, monkeypatch) -> None:
    root, ds = built
    monkeypatch.setattr(ct_abdomen, "ARCHIVE_SHA256", sha(archive))  # the cache is keyed by the archive's checksum
    # no source and no pip reachable: the built cache needs neither
    again = CTAbdomenDataset("test", root, **SMALL)
    assert not again.built and again.cache_dir == ds.cache_dir
    info = {"name": "ct_abdomen", "root": str(root), "block_size": list(SMALL["size"]), "label_nc": 26,
            "dataset_kwargs": {"num_subjects": 6, "num_val": 1, "num_test": 1, "seed": 0, "source": None}}  # fmt: skip
    test = build_split(info, "test")
    assert [e["id"] for e in test.entries] == [e["id"] for e in again.entries]


def test_extraction_takes_only_the_wanted_regular_files(tmp_path: Path, archive: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the archive's map_to_binary.py would drop its marker if it ran
    root = tmp_path / "root"
    folder = fetch_source(root, archive, sha256=sha(archive))
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert found == sorted(["LICENSE", "class_map_total.json", "example_ct_sm.nii.gz", "example_seg.nii.gz",
                            "source.json", *(f"example_seg_tissue_types/{t}.nii.gz" for t in
                                             ("skeletal_muscle", "subcutaneous_fat", "torso_fat"))])  # fmt: skip
    assert not any(p.is_symlink() for p in root.rglob("*"))
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert not (tmp_path / RUN_MARKER).exists()  # the class map was read as data, never run
    classes = json.loads((folder / "class_map_total.json").read_text())
    assert classes["5"] == "liver" and classes["117"] == "costal_cartilages"
    record = json.loads((folder / "source.json").read_text())
    assert record["sha256"] == sha(archive) and record["fetched_with"] == "local file"


def test_merged_labels_fill_tissue_types_and_body(tmp_path: Path, archive: Path) -> None:
    folder = fetch_source(tmp_path, archive, sha256=sha(archive))
    hu_src, organs, tissues = phantom()
    hu, label, affine = merged_labels(folder)
    assert label.shape == SHAPE and np.allclose(affine, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert np.array_equal(hu, hu_src.astype(np.float32))
    cid = TABLE.class_id
    assert (label[organs == 31] == cid("vertebrae")).all() and (label[organs == 100] == cid("ribs")).all()
    assert (label[organs == 86] == cid("autochthon")).all()  # the organ map wins over the muscle mask
    assert (label[(organs == 0) & (tissues["subcutaneous_fat"] > 0)] == cid("subcutaneous_fat")).all()
    assert (label[(organs == 0) & (tissues["torso_fat"] > 0)] == cid("torso_fat")).all()
    assert (label[12:15, 9:12, 3:6] == cid("other_tissue")).all()  # gas inside the body is body
    assert (label[8:20, 22:24, :] == 0).all()  # the scanner table is not
    outside = label == 0
    outside[8:20, 22:24, :] = False
    assert (hu[outside] < -500).all()  # background is the air outside the body
    assert set(np.unique(label).tolist()) >= {0, cid("other_tissue"), cid("liver"), cid("skeletal_muscle")}


def test_fake_pip_fetches_the_archive(tmp_path: Path, archive: Path) -> None:
    fake = tmp_path / "fake_pip.py"
    log = tmp_path / "pip_args.json"
    fake.write_text(
        "import json, shutil, sys\n"
        f"json.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
        "dest = sys.argv[sys.argv.index('-d') + 1]\n"
        f"shutil.copy({str(archive)!r}, dest)\n"
    )
    folder = fetch_source(tmp_path / "root", pip_command=[sys.executable, str(fake)], sha256=sha(archive))
    args = json.loads(log.read_text())
    assert args[:-1] == ["download", "--no-deps", "--no-binary", ":all:", "totalsegmentator==2.18.0", "-d"]
    assert json.loads((folder / "source.json").read_text())["fetched_with"] == "pip download"
    assert not list((tmp_path / "root").glob(".fetch-*"))  # the download folder is gone


def test_fetch_failures_say_what_to_run(tmp_path: Path, archive: Path) -> None:
    failing = tmp_path / "failing_pip.py"
    failing.write_text("import sys\nsys.stderr.write('ERROR: No matching distribution found\\n')\nsys.exit(1)\n")
    with pytest.raises(DataError, match=r"No matching distribution.*pip download --no-deps --no-binary :all:"):
        fetch_source(tmp_path / "a", pip_command=[sys.executable, str(failing)])
    with pytest.raises(DataError, match="sha256 .* is not the one of totalsegmentator-2.18.0.tar.gz"):
        fetch_source(tmp_path / "b", archive)  # the real checksum: the small archive is not it
    with pytest.raises(DataError, match="no such file"):
        fetch_source(tmp_path / "c", tmp_path / "missing.tar.gz")
    assert not (tmp_path / "b" / "source-2.18.0").exists()  # nothing half-extracted stays


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symlink_ct": True}, "example_ct_sm.nii.gz is not a regular file"),
        ({"omit": ("LICENSE",)}, "missing"),
        ({"rename": {5: "liver_renamed"}}, "class id 5 is 'liver_renamed' in the archive"),
    ],
)
def test_bad_archives_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    bad = write_archive(tmp_path / "totalsegmentator-2.18.0.tar.gz", **kwargs)
    with pytest.raises(DataError, match=message):
        folder = fetch_source(tmp_path / "root", bad, sha256=sha(bad))
        merged_labels(folder)


def test_config_and_registry_agree_with_the_table() -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    assert raw["class_names"] == list(TABLE.class_names) and raw["label_nc"] == TABLE.label_nc
    assert raw["intensity"]["kind"] == "ct_window" and raw["datamodule"]["dataset"]["source"] is None
    info = plain_data_info({k: v for k, v in raw.items() if k != "root"} | {"root": "data/ct_abdomen"})
    assert info["dataset_kwargs"]["source"] is None and info["name"] == "ct_abdomen"


def test_cli_exports_the_raw_pair_for_inspect_dataset(tmp_path: Path, archive: Path, monkeypatch, capsys) -> None:
    from scripts.inspect_dataset import main as inspect_main

    monkeypatch.setattr(ct_abdomen, "ARCHIVE_SHA256", sha(archive))
    raw = tmp_path / "mine"
    argv = ["--root", str(tmp_path / "root"), "--source", str(archive), "--export-raw", str(raw)]
    assert ct_abdomen.main(argv) == 0
    assert ct_abdomen.main(argv) == 2  # the exported files exist: refused, not overwritten
    capsys.readouterr()
    assert inspect_main([str(raw), "--name", "my_ct", "--names", str(raw / "class_names.json")]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["modality"] == "ct" and cfg["intensity"]["kind"] == "ct_window"
    # every class of the table occurs in the merged map (phantom: one structure per class)
    assert cfg["label_nc"] == TABLE.label_nc and cfg["class_names"] == list(TABLE.class_names)
    assert cfg["voxel_size"] == [3.0, 3.0, 3.0]


def test_dataset_refuses_a_block_deeper_than_the_slab(tmp_path: Path, archive: Path, monkeypatch) -> None:
    monkeypatch.setattr(ct_abdomen, "ARCHIVE_SHA256", sha(archive))
    with pytest.raises(DataError, match="spans 12 slices, fewer than the block's D=16"):
        CTAbdomenDataset("all", tmp_path, source=str(archive), **{**SMALL, "size": (16, 16, 16)})
    with pytest.raises(ValueError, match="26 classes"):
        CTAbdomenDataset("all", tmp_path, label_nc=5)
