"""Preprocessing never loses data: --overwrite replaces only our dataset, all-or-nothing, even under kill -9.

Kills happen in forked children of the test process (a real process, killed by the kernel, nothing of it
cleaned up), at each step of the commit; the folder is then checked the way a reader would see it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dataset.preprocess as pp
import dataset.transaction as tr
from dataset.autopet import discover_autopet, warn_ungrouped_studies
from dataset.contract import DataError
from dataset.nifti import load_pair
from evaluation.intensity import recorded_range
from scripts import preprocess_autopet
from tests.dataset.fakes import write_autopet_raw

SMALL = ["--block-size", "16", "16", "16", "--val-frac", "0.25", "--test-frac", "0.25", "--no-progress"]


def _run(raw: Path, dst: Path, *extra: str) -> int:
    return preprocess_autopet.main(["--src", str(raw), "--dst", str(dst), *SMALL, *extra])


def _manifest(dst: Path) -> dict:
    return json.loads((dst / "manifest.json").read_text())


def _consistent(dst: Path) -> dict:
    """The live manifest, after checking that every entry's image and label exist and load as a pair."""
    manifest = _manifest(dst)
    assert manifest["entries"]
    for entry in manifest["entries"]:
        load_pair(dst / entry["image"], dst / entry["label"], label_nc=37)
    return manifest


def _clean(dst: Path) -> None:
    """Only the live dataset is left: manifest.json and its one blocks folder, holding exactly its files."""
    manifest = _consistent(dst)
    assert sorted(p.name for p in dst.iterdir()) == sorted(["manifest.json", manifest["data_dir"]])
    files = {p.relative_to(dst).as_posix() for p in (dst / manifest["data_dir"]).rglob("*.nii.gz")}
    assert files == {e[k] for e in manifest["entries"] for k in ("image", "label")}


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_autopet_raw(root, n_patients=4)
    return root


@pytest.fixture(scope="module")
def old_dataset(raw, tmp_path_factory) -> Path:
    """A finished dataset (seed 1) to copy into each test's --dst."""
    dst = tmp_path_factory.mktemp("old") / "dst"
    assert _run(raw, dst, "--seed", "1") == 0
    return dst


def _fork(arm: Callable[[], None], argv: list[str], on_start: Callable[[int], None] | None = None) -> int:
    """Run ``preprocess_autopet.main(argv)`` in a forked child after ``arm()``; return its exit code (-9: killed)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            arm()
            code = preprocess_autopet.main(argv)
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
        finally:
            os._exit(code)
    if on_start is not None:
        on_start(pid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, dst: Path, old_data_dir: str) -> Callable[[], None]:
    """Patch the child so it kills itself with SIGKILL at ``point`` of the run."""

    def arm() -> None:
        if point == "processing":
            original = pp._process_case
            calls = []

            def process(*args, **kwargs):
                calls.append(1)
                if len(calls) == 3:
                    _kill_self()
                return original(*args, **kwargs)

            pp._process_case = process
        elif point in ("before_rename", "before_live", "after_live"):
            rename, replace = os.rename, os.replace

            def os_rename(src, dst_path, *a, **k):
                if point == "before_rename" and Path(dst_path).name.startswith("blocks-"):
                    _kill_self()
                return rename(src, dst_path, *a, **k)

            def os_replace(src, dst_path, *a, **k):
                live = Path(dst_path) == dst / "manifest.json"
                if live and point == "before_live":
                    _kill_self()
                out = replace(src, dst_path, *a, **k)
                if live and point == "after_live":
                    _kill_self()
                return out

            os.rename, os.replace = os_rename, os_replace
        elif point == "removing_old":
            unlink = Path.unlink
            count = []

            def path_unlink(self, *a, **k):
                if old_data_dir in self.parts:
                    count.append(1)
                    if len(count) == 3:
                        _kill_self()
                return unlink(self, *a, **k)

            Path.unlink = path_unlink

    return arm


@pytest.mark.parametrize(
    "point, live_seed",
    [("processing", 1), ("before_rename", 1), ("before_live", 1), ("after_live", 2), ("removing_old", 2)],
)
def test_sigkill_during_overwrite_leaves_old_or_new_dataset_whole(
    raw, old_dataset, tmp_path: Path, point: str, live_seed: int
) -> None:
    dst = tmp_path / "dst"
    shutil.copytree(old_dataset, dst)
    old_data_dir = _manifest(dst)["data_dir"]
    argv = ["--src", str(raw), "--dst", str(dst), *SMALL, "--overwrite", "--seed", "2"]
    assert _fork(_arm(point, dst, old_data_dir), argv) == -signal.SIGKILL
    manifest = _consistent(dst)  # every entry of the live manifest points at a complete, readable pair
    assert manifest["options"]["seed"] == live_seed
    # The next run removes whatever the killed one left (its staging folder, unreferenced blocks) and commits.
    assert _run(raw, dst, "--overwrite", "--seed", "3") == 0
    assert _manifest(dst)["options"]["seed"] == 3
    _clean(dst)


def test_sigterm_removes_the_staging_folder_and_keeps_the_old_dataset(raw, old_dataset, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    shutil.copytree(old_dataset, dst)
    before = _digest(dst)
    ready = tmp_path / "ready"

    def arm() -> None:
        original = pp._process_case

        def process(*args, **kwargs):
            out = original(*args, **kwargs)
            ready.touch()
            time.sleep(60)  # the signal arrives here, mid-run, with blocks already staged
            return out

        pp._process_case = process

    def terminate(pid: int) -> None:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "child never reached the first case"
            time.sleep(0.05)
        assert [p for p in dst.iterdir() if p.name.startswith(".staging-")]  # it really was mid-run
        os.kill(pid, signal.SIGTERM)

    argv = ["--src", str(raw), "--dst", str(dst), *SMALL, "--overwrite", "--seed", "2"]
    assert _fork(arm, argv, on_start=terminate) == 128 + signal.SIGTERM
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no staging folder, no temporary file
    assert _digest(dst) == before  # the old dataset is untouched


def test_src_inside_dst_is_refused_and_raw_images_survive(raw, tmp_path: Path, caplog) -> None:
    dataset_root = tmp_path / "D"
    shutil.copytree(raw / "imagesTr", dataset_root / "train" / "imagesTr")
    src = dataset_root / "train" / "imagesTr"
    assert _run(src, tmp_path / "elsewhere") == 0
    shutil.copy(tmp_path / "elsewhere" / "manifest.json", dataset_root / "manifest.json")  # looks like ours
    before = _digest(src)
    assert _run(src, dataset_root, "--overwrite") == 2
    assert "lies inside --dst" in caplog.text
    assert _digest(src) == before
    # ... and the reverse: --dst inside --src.
    assert _run(raw, raw / "out", "--overwrite") == 2
    assert "contains --dst" in caplog.text and not (raw / "out").exists()


def test_a_raw_file_inside_dst_is_refused(raw, tmp_path: Path) -> None:
    # Sources listed one by one (SynthRAD's --labels folder) are checked too, after resolving links: here the
    # labels lie in dst/labels but are reached through a link from outside dst.
    shutil.copytree(raw / "imagesTr", tmp_path / "dst" / "labels")
    (tmp_path / "alias").symlink_to(tmp_path / "dst" / "labels")
    cases = [pp.Case(c.case_id, c.patient, c.image, tmp_path / "alias" / c.label.name) for c in discover_autopet(raw)]
    with pytest.raises(DataError, match="raw file lies inside --dst"):
        pp.check_src_dst(raw, cases, tmp_path / "dst")
    pp.check_src_dst(raw, discover_autopet(raw), tmp_path / "dst")  # the untouched raw data is fine


def test_foreign_train_folder_and_foreign_manifest_are_never_deleted(raw, tmp_path: Path, caplog) -> None:
    dst = tmp_path / "dst"
    foreign = dst / "train" / "imagesTr"
    foreign.mkdir(parents=True)
    (foreign / "scan_0001.nii.gz").write_bytes(b"someone else's data")
    (dst / "val").mkdir()
    (dst / "notes.txt").write_text("keep me")
    before = _digest(dst)
    assert _run(raw, dst) == 0  # no manifest: nothing to replace, the new dataset goes beside the foreign files
    assert _run(raw, dst, "--overwrite", "--seed", "4") == 0
    after = _digest(dst)
    assert all(after[k] == v for k, v in before.items())
    assert (dst / "val").is_dir()
    _consistent(dst)

    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"entries": [], "note": "another tool's manifest"}))
    assert _run(raw, other, "--overwrite") == 2
    assert "was not written by med-lsdm" in caplog.text
    assert json.loads((other / "manifest.json").read_text())["note"] == "another tool's manifest"


def test_stale_staging_of_a_live_process_is_kept(old_dataset, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    shutil.copytree(old_dataset, dst)
    alive = dst / ".staging-0123456789ab"
    alive.mkdir()
    (alive / tr.MARKER_NAME).write_text(  # a run in another process of this host, still working
        json.dumps({"producer": "med-lsdm", "pid": os.getppid(), "host": socket.gethostname()})
    )
    foreign = dst / ".staging-ba9876543210"  # right name, no marker, not empty: not provably ours
    foreign.mkdir()
    (foreign / "x").write_text("?")
    assert tr.clean_stale(dst) == []
    assert alive.is_dir() and foreign.is_dir()


def test_preprocessed_split_folder_has_its_recorded_range(old_dataset) -> None:
    folder = old_dataset / _manifest(old_dataset)["data_dir"] / "test" / "images"
    lo, hi, where = recorded_range(folder)
    assert (lo, hi) == (-1.0, 1.0) and where.endswith("manifest.json (images_normalized)")


def test_autopet_studies_of_one_patient_share_a_split_by_default(tmp_path: Path) -> None:
    ids = write_autopet_raw(tmp_path / "raw", n_patients=4, studies_per_patient=3)
    cases = discover_autopet(tmp_path / "raw")
    assert {c.case_id: c.patient for c in cases}["PETCT_0002ab_1"] == "PETCT_0002ab"
    assert len({c.patient for c in cases}) == 4 and len(cases) == len(ids) == 12
    for seed in range(2):
        dst = tmp_path / f"out{seed}"
        assert _run(tmp_path / "raw", dst, "--seed", str(seed)) == 0
        manifest = _manifest(dst)
        split_of: dict[str, set[str]] = {}
        for case_id, record in manifest["cases"].items():
            split_of.setdefault(case_id.rsplit("_", 1)[0], set()).add(record["split"])
        assert all(len(s) == 1 for s in split_of.values()), split_of
        assert sorted(p for ps in manifest["splits"].values() for p in ps) == sorted(split_of)


def test_ungrouped_studies_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dataset.autopet"):
        assert warn_ungrouped_studies(["p1_s1", "p1_s2", "p2_s1", "PETCT_00ab_0", "PETCT_00ab_1"], None) == [
            "p1_s1",
            "p1_s2",
        ]
    assert "several studies per patient" in caplog.text and "--patient-regex" in caplog.text
    assert warn_ungrouped_studies(["p1_s1", "p1_s2"], r"^(.*)$") == []


def test_case_ids_must_be_safe_file_names(raw, tmp_path: Path, caplog) -> None:
    src = tmp_path / "raw"
    shutil.copytree(raw / "imagesTr", src)
    first = sorted(src.glob("*_0001.nii.gz"))[0].name.removesuffix("_0001.nii.gz")
    for suffix in ("_0001.nii.gz", "_0002.nii.gz"):
        (src / f"{first}{suffix}").rename(src / f"bad name{suffix}")
    assert _run(src, tmp_path / "dst") == 2
    assert "case id 'bad name' cannot be used as a file name" in caplog.text
    assert not (tmp_path / "dst" / "manifest.json").exists()
    for suffix in ("_0001.nii.gz", "_0002.nii.gz"):  # a hidden copy (macOS "._x") is not a case at all
        (src / f"bad name{suffix}").rename(src / f"._{first}{suffix}")
    assert [c.case_id for c in discover_autopet(src)] == sorted(
        p.name.removesuffix("_0001.nii.gz") for p in src.glob("PETCT_*_0001.nii.gz")
    )


def test_unwritable_or_full_dst_is_refused_before_any_work(raw, tmp_path: Path, caplog, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    assert _run(raw, tmp_path / "file") == 2
    assert "--dst" in caplog.text and "is an existing file, not a folder" in caplog.text
    processed = []
    monkeypatch.setattr(pp, "_process_case", lambda *a, **k: processed.append(1))
    monkeypatch.setattr(pp, "_space_estimate", lambda cases: 2**62)
    assert _run(raw, tmp_path / "dst") == 2
    assert "MiB free, about" in caplog.text and processed == []


def test_leftovers_of_a_kill_at_the_first_or_last_instant_are_recognised(old_dataset, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    shutil.copytree(old_dataset, dst)
    # Killed while writing the marker: the staging folder holds only the marker's temporary file.
    early = dst / ".staging-00000000000a"
    early.mkdir()
    (early / f".{tr.MARKER_NAME}.k2j4x.tmp").write_text("{")
    # Killed while removing a folder: the marker goes last, so what is left is still recognisably ours.
    late = dst / "blocks-00000000000b"
    (late / "train" / "images").mkdir(parents=True)
    (late / "train" / "images" / "x_b000.nii.gz").write_bytes(b"")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this host that has ended
    marker = {"producer": "med-lsdm", "pid": gone.pid, "host": socket.gethostname()}
    (late / tr.MARKER_NAME).write_text(json.dumps(marker))
    (late / "notes.txt").write_text("not ours")
    assert not tr._remove_our_tree(late)  # a foreign file keeps the folder, and the marker with it
    assert (late / tr.MARKER_NAME).is_file() and (late / "notes.txt").is_file()
    assert not (late / "train").exists()
    (late / "notes.txt").unlink()
    assert sorted(p.name for p in tr.clean_stale(dst)) == [early.name, late.name]
    _clean(dst)


@pytest.mark.slow
def test_sigkill_at_random_times_never_breaks_the_live_dataset(raw, old_dataset, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    shutil.copytree(old_dataset, dst)
    start = time.perf_counter()
    assert _run(raw, dst, "--overwrite", "--seed", "2") == 0
    duration = time.perf_counter() - start
    rng = random.Random(0)
    for i in range(30):
        delay = rng.uniform(0.0, 1.1 * duration)

        def kill_later(pid: int, delay: float = delay) -> None:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)

        argv = ["--src", str(raw), "--dst", str(dst), *SMALL, "--overwrite", "--seed", str(10 + i)]
        assert _fork(lambda: None, argv, on_start=kill_later) in (0, -signal.SIGKILL)
        _consistent(dst)
    assert _run(raw, dst, "--overwrite", "--seed", "99") == 0
    _clean(dst)
