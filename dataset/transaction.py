"""All-or-nothing output of a preprocessed dataset (SPEC section 10): staging, commit, clean-up of killed runs.

Layout of an output folder ``DST``::

    DST/manifest.json                                        the live dataset: entries point into blocks-<id>/
    DST/blocks-<id>/{train,val,test}/{images,labels}/...     the blocks of one committed run

A run writes its blocks and its manifest into a hidden staging folder ``DST/.staging-<id>/`` (with a marker file
naming this process), which is renamed to ``DST/blocks-<id>/``; then one rename moves the new manifest over
``DST/manifest.json``, the single step that makes the new dataset live. Only after it are the old blocks
removed. A kill at any moment leaves ``DST/manifest.json`` describing a complete dataset, the old one or the new
one; what a killed run left behind (staging folders, unreferenced ``blocks-*`` folders whose marker names a
process that is gone) is removed by the next run, and a SIGTERM removes the staging folder at once (the CLIs
call :func:`dataset.files.install_signal_cleanup`).

What is ours: an overwrite replaces only a dataset this project wrote, recognised by its manifest
(``"producer": "med-lsdm"``). Only files our naming pattern covers are ever deleted, never a folder that merely
has the right name (a foreign ``DST/train/`` is left alone).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from dataset.contract import DataError
from dataset.files import PRODUCER, atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: Hidden folder a run builds its dataset in; renamed to ``blocks-<id>`` when complete.
STAGING_PREFIX = ".staging-"
#: Folder holding one committed dataset's blocks; the live manifest's ``data_dir`` names it.
DATA_PREFIX = "blocks-"
#: Marker file inside a staging / blocks folder: who made it (producer, pid, host), so stale ones are recognised.
MARKER_NAME = ".med-lsdm-blocks.json"
_DATA_DIR_RE = re.compile(r"^blocks-[0-9a-f]{12}$")
_STAGING_RE = re.compile(r"^\.staging-[0-9a-f]{12}$")
#: Files preprocessing writes inside a staging or blocks folder (relative POSIX paths); nothing else is deleted.
_OUR_FILE_RE = re.compile(
    r"^(\.med-lsdm-blocks\.json|manifest\.json|\.manifest\.json\.[^/]*\.tmp|\.\.med-lsdm-blocks\.json\.[^/]*\.tmp"
    r"|(train|val|test)/(images|labels)/[^/]+\.nii\.gz)$"
)
#: Temporary files of an interrupted marker write (``dataset.files.temp_path_beside`` naming).
_MARKER_TEMP_RE = re.compile(r"^\.\.med-lsdm-blocks\.json\.[^/]*\.tmp$")


def manifest_is_ours(manifest: object) -> bool:
    """Whether a parsed manifest was written by this project's preprocessing (``"producer": "med-lsdm"``)."""
    return isinstance(manifest, dict) and manifest.get("producer") == PRODUCER


def live_manifest(dst: Path, overwrite: bool) -> dict[str, Any] | None:
    """The manifest an overwrite may replace (None if there is none); refuse what is not ours."""
    path = dst / MANIFEST_NAME
    if not path.exists():
        return None
    if not overwrite:
        raise FileExistsError(f"{dst} already holds a preprocessed dataset; pass --overwrite to replace it")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not manifest_is_ours(manifest):
        raise DataError(
            f'{path} was not written by med-lsdm preprocessing (no "producer": "{PRODUCER}"); refusing to '
            "replace it; choose another --dst"
        )
    return manifest


def _remove_our_tree(folder: Path) -> bool:
    """Delete the files preprocessing writes in a staging/blocks folder (:data:`_OUR_FILE_RE`), then empty folders.

    Anything else is kept (and the folder with it), with a warning. The marker goes last, so a kill midway
    leaves a folder the next run still recognises. Returns True when the folder is gone.
    """
    if not folder.is_dir() or folder.is_symlink():
        return not folder.exists()
    foreign: list[str] = []
    for here, dirs, files in os.walk(folder, topdown=False):
        base = Path(here)
        for name in files:
            rel = (base / name).relative_to(folder).as_posix()
            if rel == MARKER_NAME:
                continue
            if _OUR_FILE_RE.match(rel) and not (base / name).is_symlink():
                (base / name).unlink(missing_ok=True)
            else:
                foreign.append(rel)
        for name in dirs:
            sub = base / name
            if sub.is_symlink():
                foreign.append(sub.relative_to(folder).as_posix())
                continue
            try:
                sub.rmdir()
            except OSError:  # not empty: it holds something we did not write
                pass
    if foreign or any(p.name != MARKER_NAME for p in folder.iterdir()):
        log.warning("%s: kept, it holds files preprocessing did not write: %s", folder, foreign[:5])
        return False
    (folder / MARKER_NAME).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        log.warning("%s: kept, it holds files preprocessing did not write: %s", folder, foreign[:5])
        return False
    return True


def _remove_old(dst: Path, old: dict[str, Any] | None, keep: str) -> None:
    """Remove the dataset ``old`` described, now that another manifest is live (never ``keep``)."""
    if old is None:
        return
    data_dir = old.get("data_dir")
    if isinstance(data_dir, str) and _DATA_DIR_RE.match(data_dir) and data_dir != keep:
        _remove_our_tree(dst / data_dir)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("producer") == PRODUCER else None


def _process_gone(marker: dict[str, Any]) -> bool:
    """Whether the run a marker names is over: its process has ended, or it is this process (which is here,
    not committing). Only decidable on the same host."""
    if marker.get("host") != socket.gethostname() or not isinstance(marker.get("pid"), int):
        return False
    if marker["pid"] == os.getpid():
        return True
    try:
        os.kill(marker["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def _live_data_dir(dst: Path) -> str | None:
    """The ``data_dir`` the live manifest of ``dst`` points at (None: no manifest of ours)."""
    try:
        manifest = json.loads((dst / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("data_dir") if manifest_is_ours(manifest) else None


def clean_stale(dst: str | Path) -> list[Path]:
    """Remove what killed runs left in ``dst``: staging folders and ``blocks-*`` folders no manifest uses.

    A folder is removed only when its marker says we wrote it and the process that wrote it is gone (a run
    still working on the same ``dst`` keeps its folders); a marker-less ``.staging-*`` folder that is empty or
    holds only the marker's temporary file (a kill right after ``mkdir``) is removed too. Returns the removed
    folders.
    """
    dst = Path(dst)
    if not dst.is_dir():
        return []
    live = _live_data_dir(dst)
    removed = []
    for folder in sorted(dst.iterdir()):
        staging = bool(_STAGING_RE.match(folder.name))
        if not (staging or _DATA_DIR_RE.match(folder.name)) or folder.name == live or not folder.is_dir():
            continue
        marker = _read_marker(folder)
        if marker is None:
            # A kill between mkdir and the marker's rename leaves an empty folder or one holding only the
            # marker's temporary file: ours by name and content. Anything else without a marker is kept.
            if staging and all(p.is_file() and _MARKER_TEMP_RE.match(p.name) for p in folder.iterdir()):
                for tmp in folder.iterdir():
                    tmp.unlink()
                folder.rmdir()
                removed.append(folder)
            continue
        if not _process_gone(marker):
            log.warning("%s: left in place, the run that wrote it (%s) may still be working", folder, marker)
        elif _remove_our_tree(folder):
            log.info("removed %s, left behind by an interrupted run (pid %s)", folder, marker.get("pid"))
            removed.append(folder)
    return removed


def _commit(staging: Path, dst: Path, manifest: dict[str, Any]) -> None:
    """Make a finished staging folder the live dataset of ``dst``; the manifest rename is the one live step.

    1. the new manifest is written (atomically) inside the staging folder;
    2. the staging folder is renamed to ``dst/<data_dir>`` (complete, but no manifest points at it yet);
    3. ``<data_dir>/manifest.json`` is renamed over ``dst/manifest.json``: before this the old dataset is live,
       after it the new one.
    """
    atomic_write_json(staging / MANIFEST_NAME, manifest, overwrite=False)
    target = dst / manifest["data_dir"]
    os.rename(staging, target)
    fsync_dir(dst)
    os.replace(target / MANIFEST_NAME, dst / MANIFEST_NAME)
    fsync_dir(dst)
    fsync_dir(target)


class StagedDataset:
    """A staging folder in ``dst`` that :meth:`commit` makes the live dataset; otherwise it leaves no trace.

    Use as a context manager: on entry the staging folder and its marker are created; on exit the staging
    folder (and, if the commit did not go live, its ``blocks-<id>`` folder) is removed; after a commit without
    error the blocks of ``old`` (the manifest this run replaces) are removed too.

    Attributes:
        staging: the folder to write into (``dst/.staging-<id>``).
        data_dir: ``blocks-<id>``, the folder name the manifest's entries must start with.
    """

    def __init__(self, dst: Path, old: dict[str, Any] | None) -> None:
        token = uuid.uuid4().hex[:12]
        self.dst, self.old = dst, old
        self.staging = dst / f"{STAGING_PREFIX}{token}"
        self.data_dir = f"{DATA_PREFIX}{token}"

    def __enter__(self) -> StagedDataset:
        self.staging.mkdir()
        try:
            marker = {"producer": PRODUCER, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            atomic_write_json(self.staging / MARKER_NAME, marker)
        except BaseException:
            self._remove_leftovers()
            raise
        return self

    def commit(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` and make the staging folder the live dataset of ``dst``."""
        _commit(self.staging, self.dst, manifest)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove_leftovers()
        if exc_type is not None:
            return
        try:
            _remove_old(self.dst, self.old, keep=self.data_dir)
        except OSError as err:  # the new dataset is live; leftovers of the old one are removed by the next run
            log.warning("could not remove the previous dataset's blocks in %s: %s", self.dst, err)

    def _remove_leftovers(self) -> None:
        # A failed or interrupted run (SIGTERM included) removes its own work; after the commit's rename the
        # staging folder is gone, and blocks the live manifest points at are never touched.
        _remove_our_tree(self.staging)
        if _live_data_dir(self.dst) != self.data_dir:
            _remove_our_tree(self.dst / self.data_dir)
