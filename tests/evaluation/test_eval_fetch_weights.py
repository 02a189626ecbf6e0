"""scripts/fetch_weights.py: download, hash check, verification of present files, record; never the network."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest

from dataset import DataError
from evaluation import weights as W
from scripts import fetch_weights as F

PAYLOAD = b"not really weights, but bytes with a known sha256" * 1000


def _source(tmp_path) -> tuple[str, str]:
    src = tmp_path / "server" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src.as_uri(), hashlib.sha256(PAYLOAD).hexdigest()


def _spec(url: str, prefix: str | None) -> W.WeightSpec:
    return W.WeightSpec(key="lpips", filename="w-test.pth", url=url, used_by="test", sha256_prefix=prefix)


def test_download_from_a_file_url_checks_the_hash(tmp_path):
    url, digest = _source(tmp_path)
    dest = tmp_path / "hub" / "w.pth"
    assert F.download(url, dest, digest[:8]) == digest
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="does not start with 00000000"):
        F.download(url, tmp_path / "bad" / "w.pth", "00000000")
    assert list((tmp_path / "bad").iterdir()) == []  # neither the file nor a temporary file is left


def test_failed_download_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        F.download((tmp_path / "missing.pth").as_uri(), tmp_path / "out" / "w.pth")
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_all_downloads_then_verifies_and_records(tmp_path, caplog):
    url, digest = _source(tmp_path)
    calls = []

    def opener(u, timeout):
        calls.append((u, timeout))
        return io.BytesIO(PAYLOAD)

    dest = tmp_path / "weights"
    with caplog.at_level(logging.INFO):
        (item,) = F.fetch_all([_spec(url, digest[:8])], dest, opener=opener)
    assert (item["action"], item["sha256"], calls) == ("downloaded", digest, [(url, F.TIMEOUT_S)])
    assert digest in caplog.text and "downloaded" in caplog.text
    (again,) = F.fetch_all([_spec(url, digest[:8])], dest, opener=opener)
    assert again["action"] == "present" and len(calls) == 1  # verified, not downloaded again
    # No published hash (MedicalNet): the digest is recorded and said to be unchecked.
    (unknown,) = F.fetch_all([_spec(url, None)], tmp_path / "w2", opener=opener)
    assert unknown["check"].startswith("no published hash") and unknown["sha256"] == digest
    record = json.loads((dest / F.RECORD_NAME).read_text())
    assert record["producer"] == "med-lsdm" and record["files"]["w-test.pth"]["sha256"] == digest


def test_a_corrupt_present_file_needs_force(tmp_path):
    url, digest = _source(tmp_path)
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "w-test.pth").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match="--force"):
        F.fetch(_spec(url, digest[:8]), dest)
    item = F.fetch(_spec(url, digest[:8]), dest, force=True)
    assert item["action"] == "downloaded" and (dest / "w-test.pth").read_bytes() == PAYLOAD


def test_cli_fetches_into_dest_and_lists(tmp_path, monkeypatch, caplog):
    url, digest = _source(tmp_path)
    monkeypatch.setitem(W.ALL_WEIGHTS, "lpips", _spec(url, digest[:8]))
    with caplog.at_level(logging.INFO):
        assert F.main(["--only", "lpips", "--dest", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "w-test.pth").read_bytes() == PAYLOAD
    assert f"--weights-dir {tmp_path / 'd'}" in caplog.text
    assert F.main(["--only", "lpips", "--dest", str(tmp_path / "e"), "--list"]) == 0
    assert not (tmp_path / "e").exists()  # --list writes nothing
    (tmp_path / "f").write_text("a file, not a folder")
    assert F.main(["--only", "lpips", "--dest", str(tmp_path / "f")]) == 2


def test_specs_are_the_official_files():
    assert set(W.ALL_WEIGHTS) == {"lpips", "fid", "fid3d"}
    for spec in W.ALL_WEIGHTS.values():
        assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
        if spec.sha256_prefix:
            assert spec.sha256_prefix in spec.filename  # torch hub naming: name-<sha256 prefix>.pth
    assert W.VGG16.url == "https://download.pytorch.org/models/vgg16-397923af.pth"


# ------------------------------------------------------------------ the output-folder contract (issue 20)
def test_a_linked_dest_or_weight_file_is_refused_and_nothing_is_written_through_it(tmp_path, monkeypatch):
    url, digest = _source(tmp_path)
    monkeypatch.setitem(W.ALL_WEIGHTS, "lpips", _spec(url, digest[:8]))
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "linked").symlink_to(target, target_is_directory=True)
    assert F.main(["--only", "lpips", "--dest", str(tmp_path / "linked")]) == 2
    # a weight file that is a link to a user's file: not written through, even with --force
    dest = tmp_path / "d"
    dest.mkdir()
    (target / "mine.pth").write_bytes(b"mine")
    (dest / "w-test.pth").symlink_to(target / "mine.pth")
    assert F.main(["--only", "lpips", "--dest", str(dest), "--force"]) == 2
    assert sorted(p.name for p in target.iterdir()) == ["mine.pth"] and (target / "mine.pth").read_bytes() == b"mine"


def test_force_replaces_only_recorded_or_broken_files(tmp_path, monkeypatch):
    url, digest = _source(tmp_path)
    spec = _spec(url, digest[:8])
    monkeypatch.setitem(W.ALL_WEIGHTS, "lpips", spec)
    # a verified copy someone else put there: --force does not replace it (it is theirs); without, it is used
    dest = tmp_path / "theirs"
    dest.mkdir()
    (dest / "w-test.pth").write_bytes(PAYLOAD)
    mtime = (dest / "w-test.pth").stat().st_mtime_ns
    assert F.main(["--only", "lpips", "--dest", str(dest), "--force"]) == 2
    assert F.main(["--only", "lpips", "--dest", str(dest)]) == 0
    assert (dest / "w-test.pth").stat().st_mtime_ns == mtime
    assert json.loads((dest / F.RECORD_NAME).read_text())["outputs"] == []  # verified, but not ours
    # a file this tool downloaded (recorded) is replaced by --force
    ours = tmp_path / "ours"
    assert F.main(["--only", "lpips", "--dest", str(ours)]) == 0
    assert json.loads((ours / F.RECORD_NAME).read_text())["outputs"] == ["w-test.pth"]
    assert F.main(["--only", "lpips", "--dest", str(ours), "--force"]) == 0
    # no published hash and not recorded: cannot tell it is broken, so never replaced
    monkeypatch.setitem(W.ALL_WEIGHTS, "lpips", _spec(url, None))
    (dest / "w-test.pth").write_bytes(b"user's own file")
    assert F.main(["--only", "lpips", "--dest", str(dest), "--force"]) == 2
    assert (dest / "w-test.pth").read_bytes() == b"user's own file"


def test_a_held_dest_a_foreign_record_and_repeated_names_are_one_line(tmp_path, monkeypatch, capsys, caplog):
    from dataset.files import OutputFolder

    url, digest = _source(tmp_path)
    monkeypatch.setitem(W.ALL_WEIGHTS, "lpips", _spec(url, digest[:8]))
    with OutputFolder(tmp_path / "busy"):
        assert F.main(["--only", "lpips", "--dest", str(tmp_path / "busy")]) == 2
    assert "in use by another run" in caplog.text and not (tmp_path / "busy" / "w-test.pth").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / F.RECORD_NAME).write_text('{"mine": 1}')
    assert F.main(["--only", "lpips", "--dest", str(tmp_path / "foreign")]) == 2
    assert F.main(["--only", "lpips", "lpips", "--dest", str(tmp_path / "twice")]) == 2
    assert "lists 'lpips' twice" in caplog.text and not (tmp_path / "twice").exists()
    capsys.readouterr()
    assert F.main(["--only", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice" in err
