"""File-backed datasets refuse bad data when they are built, before training: label ranges of every file
(cached by size and mtime), unsafe ids and manifest paths, class names that do not match label_nc."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import hydra
import numpy as np
import pytest

import dataset.nifti_pairs as nifti_pairs
from dataset.contract import DataError
from dataset.datamodule import VolumeDataModule
from dataset.nifti_pairs import CACHE_ENV, NiftiPairsDataset, label_cache_path
from tests.dataset.fakes import write_nifti
from tests.train.helpers import compose_config

CT = {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000}
SHAPE = (6, 5, 4)


def _pairs(root: Path, n: int = 5, bad_last: int | None = None) -> list[str]:
    """``root/images`` + ``root/labels`` with labels 0..2; the last label file gets ``bad_last`` in one voxel."""
    rng = np.random.default_rng(0)
    ids = [f"vol{i}" for i in range(n)]
    for k, sid in enumerate(ids):
        label = rng.integers(0, 3, SHAPE).astype(np.uint8)
        if bad_last is not None and k == n - 1:
            label[1, 2, 3] = bad_last
        write_nifti(root / "images" / f"{sid}.nii.gz", rng.uniform(-500, 500, SHAPE).astype(np.float32))
        write_nifti(root / "labels" / f"{sid}.nii.gz", label)
    return ids


def _manifest(root: Path, entries: list[dict]) -> Path:
    path = root / "manifest.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_bad_label_in_the_last_file_fails_at_construction(tmp_path: Path) -> None:
    _pairs(tmp_path, bad_last=4)
    with pytest.raises(DataError, match=r"labels/vol4.nii.gz: label values in \[0, 4\] outside \[0, 3\)"):
        NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT)
    assert len(NiftiPairsDataset("all", tmp_path, label_nc=5, intensity=CT)) == 5  # same files, enough classes


def test_bad_label_in_a_later_training_file_fails_at_datamodule_setup(tmp_path: Path) -> None:
    ids = _pairs(tmp_path, bad_last=4)
    entries = [
        {"image": f"images/{s}.nii.gz", "label": f"labels/{s}.nii.gz", "split": "val" if s == "vol0" else "train"}
        for s in ids
    ]
    _manifest(tmp_path, entries)
    factory = functools.partial(NiftiPairsDataset, root=tmp_path, label_nc=3, intensity=CT)
    dm = VolumeDataModule(dataset=factory, batch_size=1, num_workers=0, label_nc=3)
    with pytest.raises(DataError, match="vol4.nii.gz: label values"):
        dm.setup("fit")  # the first training sample is fine; the fourth is not


def test_label_ranges_are_cached_by_size_and_mtime(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = tmp_path / "data"
    _pairs(data)
    data.chmod(0o555)  # the data folder is only read (root could still write; the listing below checks it)
    try:
        NiftiPairsDataset("all", data, label_nc=3, intensity=CT)
    finally:
        data.chmod(0o755)
    assert sorted(p.name for p in data.iterdir()) == ["images", "labels"]  # nothing written beside the data
    cache_file = label_cache_path(data)
    assert cache_file.parent.parent == tmp_path / "cache"
    cache = json.loads(cache_file.read_text())
    assert cache["producer"] == "med-lsdm" and sorted(cache["files"]) == [f"labels/vol{i}.nii.gz" for i in range(5)]
    assert cache["files"]["labels/vol0.nii.gz"]["max"] == 2

    reads: list[Path] = []
    real = nifti_pairs.label_value_range
    monkeypatch.setattr(nifti_pairs, "label_value_range", lambda p: (reads.append(Path(p)), real(p))[1])
    NiftiPairsDataset("all", data, label_nc=3, intensity=CT)
    assert reads == []  # nothing changed: no label file is read again

    changed = data / "labels" / "vol2.nii.gz"
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 7
    write_nifti(changed, label)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="vol2.nii.gz: label values in \\[0, 7\\] outside \\[0, 3\\)"):
        NiftiPairsDataset("all", data, label_nc=3, intensity=CT)
    assert reads == [changed]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"id": "../../x"}, "id '../../x' cannot be used as a file name"),
        ({"id": "/tmp/x"}, "id '/tmp/x' cannot be used as a file name"),
        ({"image": "../outside/vol0.nii.gz"}, "must be relative and stay inside the dataset folder"),
        ({"label": "/abs/vol0.nii.gz"}, "must be relative and stay inside the dataset folder"),
        ({"image": "images/../../vol0.nii.gz"}, "must be relative and stay inside the dataset folder"),
    ],
)
def test_manifest_ids_and_paths_are_validated(tmp_path: Path, entry: dict, message: str) -> None:
    _pairs(tmp_path, n=2)
    good = {"image": "images/vol0.nii.gz", "label": "labels/vol0.nii.gz", "split": "test", "id": "vol0"}
    other = {"image": "images/vol1.nii.gz", "label": "labels/vol1.nii.gz", "split": "train", "id": "vol1"}
    path = _manifest(tmp_path, [other, {**good, **entry}])
    with pytest.raises(DataError, match=f"manifest.json: entry 1.*{message}"):
        NiftiPairsDataset("train", tmp_path, label_nc=3, intensity=CT)  # checked even outside the asked split
    _manifest(tmp_path, [other, good])
    assert [sid for sid, _, _ in NiftiPairsDataset("all", path.parent, label_nc=3, intensity=CT).items] == [
        "vol1",
        "vol0",
    ]


def test_unsafe_file_names_in_folder_layouts(tmp_path: Path) -> None:
    _pairs(tmp_path, n=1)
    for sub in ("images", "labels"):
        (tmp_path / sub / "vol0.nii.gz").rename(tmp_path / sub / "vol 0;.nii.gz")
    with pytest.raises(DataError, match="sample id 'vol 0;' cannot be used as a file name"):
        NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT)


def test_class_names_must_match_label_nc(tmp_path: Path) -> None:
    _pairs(tmp_path, n=1)
    with pytest.raises(ValueError, match=r"label_nc=3 but 2 class_names \['bg', 'a'\]"):
        NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT, class_names=["bg", "a"])
    ds = NiftiPairsDataset("all", tmp_path, label_nc=3, intensity=CT, class_names=["bg", "a", "b"])
    assert ds.class_names == ["bg", "a", "b"]
    entries = [{"image": "images/vol0.nii.gz", "label": "labels/vol0.nii.gz", "split": "train"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"entries": entries, "class_names": ["bg", "a", "b", "c"]}))
    with pytest.raises(DataError, match="manifest has 4 class names, the config 3"):
        NiftiPairsDataset("all", tmp_path, label_nc=3, class_names=["bg", "a", "b"])


def test_config_class_names_of_the_wrong_length_fail_when_the_dataset_is_built(tmp_path: Path) -> None:
    _pairs(tmp_path, n=3)
    overrides = [
        "dataset=nifti_pairs",
        f"dataset.root={tmp_path}",
        "dataset.label_nc=3",
        "dataset.class_names=[bg,a]",
        "dataset.intensity={kind: ct_window, hu_min: -1000, hu_max: 1000}",
    ]
    cfg = compose_config("vqgan", overrides)
    factory = hydra.utils.instantiate(cfg.dataset.datamodule.dataset, _convert_="all")
    with pytest.raises(ValueError, match=r"label_nc=3 but 2 class_names \['bg', 'a'\]"):
        factory("all")
