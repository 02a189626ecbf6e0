"""Safe file handling for every command: atomic writes, names from data, output checks, run records.

This is the one place that writes files for the project (SPEC section 10):

- :func:`atomic_write` writes to a temporary file *in the target folder*, fsyncs it, then ``os.replace``\\ s it
  over the target (and fsyncs the folder), so a reader or a killed process never sees a half-written file, even
  when the folder is on another file system than ``$TMPDIR`` (scratch, NFS). Without ``overwrite`` the final
  step is a hard link, an atomic "create if absent". Files follow the umask like any other file.
- :func:`install_signal_cleanup` turns SIGTERM (and SIGHUP) into ``SystemExit`` so ``finally`` blocks run and
  no hidden temporary file is left behind by a cancelled job.
- :func:`check_name` validates a name that comes from data (manifest id, file name, checkpoint field, class
  name) before it becomes part of a path: one component, no separator, no leading dot, no ``..``.
- :func:`check_output_dir` checks an output folder up front: not a file, writable, with some free space.
- :func:`write_run_record` / :func:`read_run_record` keep the record of what a command wrote (inputs,
  checkpoint hash, seed, settings, outputs) so ``--overwrite`` can replace exactly that set and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dataset.contract import DataError

#: Key that marks a JSON file as written by this project (run records, manifests).
PRODUCER = "med-lsdm"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@-]*$")
_live_temps: set[Path] = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a rename inside it survives a crash (a no-op where the file system does not allow it)."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def temp_path_beside(path: Path, suffix: str = "") -> Iterator[Path]:
    """A fresh hidden temporary path in ``path``'s folder, removed on exit (also on SIGTERM, see below).

    ``suffix`` keeps a meaningful extension for writers that look at it (``.nii.gz``, ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any other file
    _live_temps.add(tmp)
    try:
        yield tmp
    finally:
        _live_temps.discard(tmp)
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object], overwrite: bool = True, suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then move it into place.

    Args:
        path: destination; parent folders are created.
        write: writes the whole content to the path it is given.
        overwrite: replace an existing file. Without it an existing ``path`` raises ``FileExistsError`` and the
            move is an atomic create-if-absent (hard link), so two writers cannot both succeed.
        suffix: extension the temporary file keeps (for writers that choose a format by it).

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    with temp_path_beside(path, suffix) as tmp:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass --overwrite to replace it") from None
            except OSError:  # no hard links on this file system: check, then rename
                if path.exists():
                    raise FileExistsError(f"{path} exists; pass --overwrite to replace it") from None
                os.replace(tmp, path)
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write UTF-8 text atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | Path, data: Any, overwrite: bool = True) -> Path:
    """Write JSON (indented, UTF-8) atomically (:func:`atomic_write`)."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n", overwrite=overwrite)


def atomic_torch_save(path: str | Path, obj: object, overwrite: bool = True) -> Path:
    """``torch.save`` atomically (:func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=overwrite)


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint of unknown origin as plain data (``weights_only=True``; ``mmap``: tensors read lazily).

    Raises:
        DataError: the file is missing or is not a readable PyTorch checkpoint (one line, naming the file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def _cleanup_and_exit(signum: int, _frame: object) -> None:
    for tmp in list(_live_temps):
        tmp.unlink(missing_ok=True)
    raise SystemExit(128 + signum)


def install_signal_cleanup() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit`` so temporary files and staging folders are removed.

    Call it once at the start of a command-line tool (not inside Lightning training, whose own SIGTERM and
    Slurm requeue handling must stay in charge).
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread / not on this platform
            signal.signal(sig, _cleanup_and_exit)


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path component, else raise :class:`DataError`.

    Safe: a non-empty string of letters, digits and ``_ . + = , @ -``, not starting with a dot or a dash,
    at most 200 characters; so no separator, no ``..``, no absolute path, no hidden file.
    """
    if not isinstance(name, str) or not name or len(name) > 200 or not _SAFE_NAME.match(name) or ".." in name:
        raise DataError(
            f"{what} {name!r} cannot be used as a file name (one path component of letters, digits and "
            "_.+=,@- with no leading dot, no separator and no '..')"
        )
    return name


def check_output_dir(folder: str | Path, min_free_bytes: int = 0, what: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, before any expensive work.

    The folder (and its parents) is created if missing; it must not be a file, must accept a new file, and its
    file system must have at least ``min_free_bytes`` free.

    Raises:
        DataError: one line saying what is wrong with the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} {folder} is an existing file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # An unnamed file (O_TMPFILE where the OS has it, else created and unlinked at once): a kill during the
        # probe leaves nothing behind.
        with tempfile.TemporaryFile(prefix=".write-probe.", dir=folder):
            pass
    except OSError as err:
        raise DataError(f"{what} {folder} is not writable ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise DataError(f"{what} {folder}: {free / 2**20:.0f} MiB free, about {min_free_bytes / 2**20:.0f} MiB needed")
    return folder


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (checkpoint identity in run records)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_run_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a run record (JSON) atomically; it is marked as ours with ``"producer": "med-lsdm"``.

    ``record["outputs"]`` should list the files the run wrote, relative to the record's folder, so a later
    ``--overwrite`` run removes exactly those (:func:`recorded_outputs`).
    """
    return atomic_write_json(path, {"producer": PRODUCER, **record})


def read_run_record(path: str | Path) -> dict[str, Any] | None:
    """The run record at ``path`` if it is one of ours, else ``None`` (missing, unreadable or foreign)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("producer") == PRODUCER else None


def recorded_outputs(record_path: str | Path) -> list[Path]:
    """The files a previous run recorded in ``record_path``, resolved inside its folder.

    Entries that are not plain names or relative paths inside the folder are ignored: a run record can never
    make us delete something outside the folder it describes.
    """
    record = read_run_record(record_path)
    folder = Path(record_path).parent.resolve()
    out = []
    for rel in (record or {}).get("outputs", []):
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            continue
        parts = Path(rel).parts
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            continue
        target = (folder / rel).resolve()
        if target.parent == folder or folder in target.parents:
            out.append(target)
    return out
