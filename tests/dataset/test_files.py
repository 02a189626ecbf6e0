"""dataset.files: the one atomic-write helper, safe names, output checks and run records."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dataset.contract import DataError
from dataset.files import (
    PRODUCER,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_name,
    check_output_dir,
    install_signal_cleanup,
    read_run_record,
    recorded_outputs,
    temp_path_beside,
    write_run_record,
)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_leaves_old_file_and_no_temp_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(target, failing)
    assert target.read_text() == "old" and _hidden(tmp_path) == []


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        atomic_torch_save(tmp_path / "c.pt", {"w": torch.ones(2)})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name  # not mkstemp's 0600
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": 1}
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))


def test_overwrite_false_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "first", overwrite=False)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        atomic_write_text(target, "second", overwrite=False)
    assert target.read_text() == "first" and _hidden(tmp_path) == []
    atomic_write_text(target, "third")
    assert target.read_text() == "third"


def test_suffix_is_kept_for_writers_that_look_at_it(tmp_path: Path) -> None:
    seen = []
    atomic_write(tmp_path / "v.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")), suffix=".nii.gz")
    assert seen[0].startswith(".v.nii.gz.") and seen[0].endswith(".tmp.nii.gz")


def test_sigterm_removes_live_temporary_files(tmp_path: Path) -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    install_signal_cleanup()
    try:
        with pytest.raises(SystemExit) as info, temp_path_beside(tmp_path / "x.nii.gz", ".nii.gz") as tmp:
            assert tmp.exists()
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
            pytest.fail("SIGTERM did not raise SystemExit")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert info.value.code == 128 + signal.SIGTERM
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("bad", ["../x", "/abs", ".hidden", "a/b", "", "..", "a\\b", "-rf", 7, None, "x" * 201])
def test_check_name_rejects_unsafe_names(bad) -> None:
    with pytest.raises(DataError, match="cannot be used as a file name"):
        check_name(bad, "case id")


@pytest.mark.parametrize("good", ["case_001", "PETCT_0af7_0", "s1.v2", "a-b+c=d,e@f"])
def test_check_name_accepts_plain_names(good: str) -> None:
    assert check_name(good) == good


def test_recorded_outputs_stay_inside_the_record_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "victim.txt").write_text("outside")
    record = run / "generation.json"
    write_run_record(
        record, {"seed": 3, "outputs": ["a.nii.gz", "sub/b.png", "../victim.txt", "/etc/passwd", ".hidden", 5]}
    )
    assert read_run_record(record)["producer"] == PRODUCER
    assert recorded_outputs(record) == [(run / "a.nii.gz").resolve(), (run / "sub" / "b.png").resolve()]
    (run / "foreign.json").write_text(json.dumps({"outputs": ["a.nii.gz"]}))  # no producer: not ours
    assert read_run_record(run / "foreign.json") is None and recorded_outputs(run / "foreign.json") == []


def test_check_output_dir_refuses_a_file_and_an_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is an existing file, not a folder"):
        check_output_dir(tmp_path / "file", what="--out")
    # A file where a parent folder should be: the folder cannot be created (works for root too).
    with pytest.raises(DataError, match="is not writable"):
        check_output_dir(tmp_path / "file" / "sub", what="--out")
    with pytest.raises(DataError, match="MiB free, about"):
        check_output_dir(tmp_path / "ok", min_free_bytes=2**62)
    assert check_output_dir(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert _hidden(tmp_path / "new" / "deep") == []  # the write probe is removed


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_output_dir_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(DataError, match="is not writable"):
            check_output_dir(folder)
    finally:
        folder.chmod(0o755)
