"""Embedded MNI152 dataset: distinct subjects, 5 classes on the anatomy, disjoint splits, cache reuse."""

from __future__ import annotations

import json
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.contract import validate_sample
from dataset.datamodule import VolumeDataModule
from dataset.mni152 import MNI152Dataset

SMALL = {"num_subjects": 6, "size": (16, 16, 16), "num_val": 1, "num_test": 1, "seed": 0}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, MNI152Dataset]:
    root = tmp_path_factory.mktemp("mni152")
    return root, MNI152Dataset("all", root, **SMALL)


def test_subjects_conform_and_hold_all_five_classes(built) -> None:
    _, ds = built
    assert len(ds) == 6 and ds.built
    for i in range(len(ds)):
        sample = ds[i]
        validate_sample(sample, 5)
        assert sample["image"].shape == (1, 16, 16, 16)
        assert torch.unique(sample["label"]).tolist() == [0, 1, 2, 3, 4]


def test_labels_sit_on_the_anatomy(built) -> None:
    _, ds = built
    for i in range(len(ds)):
        image, label = ds[i]["image"][0], ds[i]["label"][0]
        mean = [float(image[label == k].mean()) for k in range(5)]
        # T1 contrast: white matter brightest, brain above the extra-cerebral rim, background darkest. (At 16^3 the
        # few CSF voxels are as bright as grey matter through partial volume; 32^3 also orders GM > CSF.)
        assert mean[4] > max(mean[3], mean[2]) and min(mean[3], mean[2]) > mean[1] > mean[0]
        assert float((label > 0).float().mean()) > 0.25  # cropped to the head: it fills the block


def test_depth_is_superior_inferior_with_real_millimetres(built) -> None:
    _, ds = built
    affine = ds[0]["affine"].numpy()
    k_axis = affine[:3, 2]  # the stored K axis is D
    assert abs(k_axis[2]) > 0.9 * np.linalg.norm(k_axis) and k_axis[2] > 0  # points superior
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    assert (voxel > 8).all() and (voxel < 14).all()  # a ~140-180 mm head over 16 voxels


def test_subjects_are_distinct(built) -> None:
    _, ds = built
    images = [ds[i]["image"] for i in range(len(ds))]
    labels = [ds[i]["label"] for i in range(len(ds))]
    for i in range(len(ds)):
        for j in range(i + 1, len(ds)):
            assert float((images[i] - images[j]).abs().mean()) > 0.02
            assert not torch.equal(labels[i], labels[j])


def test_splits_are_disjoint(built) -> None:
    root, _ = built
    ids = {s: {sid for sid, _, _ in MNI152Dataset(s, root, **SMALL)._pairs.items} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_cache_is_reused_and_a_new_config_gets_its_own(built) -> None:
    root, ds = built
    manifest = ds.cache_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = MNI152Dataset("train", root, **SMALL)
    assert not again.built and again.cache_dir == ds.cache_dir and manifest.stat().st_mtime_ns == before
    other = MNI152Dataset("train", root, **{**SMALL, "num_subjects": 3, "size": (8, 8, 8)})
    assert other.built and other.cache_dir != ds.cache_dir and manifest.stat().st_mtime_ns == before
    recorded = json.loads((other.cache_dir / "manifest.json").read_text())
    assert recorded["config"]["size"] == [8, 8, 8] and recorded["config_hash"] in other.cache_dir.name


def test_build_is_deterministic_and_concurrency_safe(tmp_path: Path) -> None:
    cfg = {"num_subjects": 3, "size": (8, 8, 8), "num_val": 1, "num_test": 1, "seed": 7}
    results: list[MNI152Dataset] = []
    threads = [
        threading.Thread(target=lambda: results.append(MNI152Dataset("all", tmp_path / "a", **cfg))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.built for r in results) == [False, True]  # built once, the other waited and reused it
    assert [p.name for p in (tmp_path / "a").iterdir() if not p.name.endswith(".lock")] == [results[0].cache_dir.name]
    fresh = MNI152Dataset("all", tmp_path / "b", **cfg)
    for i in range(3):
        assert torch.equal(fresh[i]["image"], results[0][i]["image"])
        assert torch.equal(fresh[i]["label"], results[0][i]["label"])


def test_datamodule_batches(built) -> None:
    root, _ = built
    dm = VolumeDataModule(partial(MNI152Dataset, root=root, **SMALL), batch_size=2, num_workers=0, label_nc=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["label"].dtype == torch.int64
    for i in range(2):
        validate_sample({k: v[i] for k, v in batch.items()}, 5)


@pytest.mark.parametrize(
    "kw",
    [{"label_nc": 4}, {"num_val": 3, "num_test": 3}, {"size": (16, 16)}, {"size": (4, 16, 16)}],
    ids=["label_nc", "counts", "rank", "too-small"],
)
def test_invalid_arguments(tmp_path: Path, kw: dict) -> None:
    with pytest.raises(ValueError):
        MNI152Dataset("train", tmp_path, **{**SMALL, **kw})
