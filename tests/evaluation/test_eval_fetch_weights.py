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
