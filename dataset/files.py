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

The output-folder contract every writing command follows (:class:`OutputFolder`, :func:`plan_outputs`,
:func:`check_output_files`):

1. every option and input is validated first (``dataset.cli``), then the folder is *claimed*: not a symlink, not a
   file, writable; a lock file (:data:`LOCK_NAME`) is held for the whole run, so a second run into the same folder
   is refused at once instead of silently mixing files; staging folders (:data:`STAGING_PREFIX`) that a killed
   run left behind are removed under that lock;
2. a file the run will write that exists and is not listed by the folder's run record is refused, even with
   ``--overwrite`` (it is the user's), and so is any output entry or sub-folder that is a symbolic link: nothing is
   written through, replaced through or deleted through a link;
3. files are written atomically; with ``--overwrite`` exactly the previous record's set is replaced (its files
   this run does not write again are removed, lexically, never following a link) and the new record lists what
   was written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
    if path.is_symlink():
        raise DataError(f"{path} is a symbolic link; outputs are never written through a link")
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


def _recorded_relpaths(record: dict[str, Any] | None) -> list[str]:
    """The ``outputs`` of a run record that are safe relative paths (no absolute path, ``..`` or hidden part)."""
    out = []
    for rel in (record or {}).get("outputs", []):
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            continue
        parts = Path(rel).parts
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            continue
        out.append(Path(*parts).as_posix())
    return out


def recorded_outputs(record_path: str | Path) -> list[Path]:
    """The files a previous run recorded in ``record_path``, as paths inside its folder (never resolved).

    Entries that are not plain names or relative paths inside the folder are ignored: a run record can never
    make us delete something outside the folder it describes. The paths are *lexical*: a recorded entry that is
    now a symbolic link stays the link (:func:`plan_outputs` refuses it), it is never followed to its target.
    """
    folder = Path(record_path).parent
    return [folder / rel for rel in _recorded_relpaths(read_run_record(record_path))]


#: Lock file held by a writing run in its output folder (``fcntl.flock``; released when the process dies).
LOCK_NAME = ".med-lsdm.lock"
#: Prefix of the staging folders a run writes into before moving the finished files into place.
STAGING_PREFIX = ".staging-"
#: Marker file inside a staging folder made by :meth:`OutputFolder.staging` (how a later run knows it is ours).
STAGING_MARKER = ".med-lsdm-staging"


def link_in_path(folder: Path, path: Path) -> Path | None:
    """The first component of ``path`` below ``folder`` (itself included) that is a symbolic link, or ``None``."""
    folder, path = Path(folder), Path(path)
    try:
        rel = path.relative_to(folder)
    except ValueError:
        rel = Path(path.name)
        folder = path.parent
    cur = folder
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            return cur
    return None


def check_not_link(path: Path, what: str = "--out") -> None:
    """Refuse an output path that is a symbolic link (``DataError``): nothing is written or deleted through one."""
    if Path(path).is_symlink():
        raise DataError(f"{what} {path} is a symbolic link; outputs are never written or deleted through a link")


def check_distinct_folders(folders: dict[str, Path | None]) -> None:
    """Refuse two output folders of one run that are the same folder or nested (``{option: folder}``).

    One run's outputs would otherwise count as the other's stale files (and be deleted) or mix two records.
    """
    named = [(k, Path(v).absolute()) for k, v in folders.items() if v is not None]
    for i, (ka, a) in enumerate(named):
        for kb, b in named[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise DataError(f"{ka} {folders[ka]} and {kb} {folders[kb]} overlap; give them separate folders")


@dataclass(frozen=True)
class OutputPlan:
    """What a run will write and what an ``--overwrite`` removes: decided before any expensive work.

    Attributes:
        files: every file the run writes, in its folder.
        stale: files of the previous run (its run record) that this run does not rewrite; removed at the end.
    """

    files: tuple[Path, ...]
    stale: tuple[Path, ...]

    def remove_existing(self) -> None:
        """Delete every recorded entry (files and folders) before a run that rebuilds all of them.

        :func:`plan_outputs` has checked that each existing one is listed by our record and is not a link.
        """
        for path in (*self.files, *self.stale):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)

    def remove_stale(self) -> None:
        """Delete the previous run's files this run did not rewrite (a link is never followed: unlink only)."""
        for path in self.stale:
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)


def plan_outputs(
    out_dir: str | Path,
    files: Iterable[str | Path],
    overwrite: bool,
    record_name: str,
    tool: str | None = None,
    what: str = "--out",
) -> OutputPlan:
    """Check a folder's state against the files a run will write, before any expensive work.

    Without ``overwrite`` no file may exist yet, and a folder that holds a previous run's record is refused as a
    whole. With it, exactly the previous record's outputs are replaced (those this run does not write again are
    :attr:`OutputPlan.stale`). A file of the same name that no record of ours lists is never replaced, an output
    entry or sub-folder that is a symbolic link is refused, and so is a record file that is not ours (or, with
    ``tool``, not of this tool: its ``command`` or ``tool`` field).

    Raises:
        DataError: a link, a foreign record, an unrecorded file in the way. FileExistsError: needs ``--overwrite``.
    """
    out_dir = Path(out_dir)
    files = [Path(f) if Path(f).is_relative_to(out_dir) else out_dir / f for f in files]
    check_not_link(out_dir, what)
    record_path = out_dir / record_name
    check_not_link(record_path, what)
    record = read_run_record(record_path) if record_path.exists() else None
    if record_path.exists():
        if record is None:
            raise DataError(f"{record_path} exists and is not a Med-LSDM run record; choose another {what}")
        if tool is not None and tool not in (record.get("tool"), record.get("command")):
            raise DataError(f"{record_path} is the record of another command; choose another {what}")
    for path in files:
        link = link_in_path(out_dir, path)
        if link is not None:
            raise DataError(f"{what} entry {link} is a symbolic link; outputs are never written through a link")
    existing = [p for p in files if p.exists()]
    if not overwrite:
        if existing:
            raise FileExistsError(f"{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --overwrite")
        if record is not None:
            raise FileExistsError(f"{out_dir} holds a previous run ({record_name}); pass --overwrite")
    recorded = recorded_outputs(record_path) if record is not None else []
    listed = {p.absolute() for p in recorded}
    foreign = [p for p in existing if p.absolute() not in listed]
    if foreign:
        raise DataError(
            f"{foreign[0]} exists and was not written by a previous run recorded in {record_path}; "
            "--overwrite never replaces it: move it away or choose another folder"
        )
    for path in recorded:
        link = link_in_path(out_dir, path)
        if link is not None:
            raise DataError(f"{what} entry {link} is a symbolic link; outputs are never deleted through a link")
    mine = {p.absolute() for p in files}
    return OutputPlan(tuple(files), tuple(p for p in recorded if p.absolute() not in mine))


class OutputFolder:
    """A claimed output folder: held by a lock file for the run, its stale staging folders removed.

    Use as a context manager::

        with OutputFolder(args.out, overwrite=args.overwrite) as out:
            plan = out.plan(names, RECORD, tool="generate_labels")
            staging = out.staging("labels")
            ...  # write into staging, then move into place
            plan.remove_stale()
            write_run_record(out.path / RECORD, {..., "outputs": names})

    On the way out the lock is released; a folder this claim created is removed again when the run left it
    empty (a refused run leaves no trace); staging folders this run made are removed.

    Raises (on entry):
        DataError: the folder is a symbolic link or a file, is not writable, or another run holds it.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, what: str = "--out") -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []
        self._staging: list[Path] = []

    def __enter__(self) -> OutputFolder:
        check_not_link(self.path, self.what)
        missing = []
        cur = self.path
        while not cur.exists() and not cur.is_symlink() and cur != cur.parent:
            missing.append(cur)
            cur = cur.parent
        check_output_dir(self.path, what=self.what)
        self._created = missing
        try:
            self._lock()
            self._remove_stale_staging()
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DataError(
                        f"{self.what} {self.path} is in use by another run (lock {LOCK_NAME}); wait for it to "
                        "finish or choose another folder"
                    ) from None
                raise
            # the previous holder may have removed the file between our open and our lock: lock the current one
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(lock))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def _remove_stale_staging(self) -> None:
        """Staging folders with our marker can only be a killed run's: a live run would hold our lock.

        Only folders :meth:`staging` made (its marker file inside, not a link) are removed; anything else with a
        similar name is not ours and stays.
        """
        for entry in self.path.iterdir():
            if (
                entry.name.startswith(STAGING_PREFIX)
                and not entry.is_symlink()
                and entry.is_dir()
                and (entry / STAGING_MARKER).is_file()
            ):
                shutil.rmtree(entry, ignore_errors=True)

    def plan(self, files: Iterable[str | Path], record_name: str, tool: str | None = None) -> OutputPlan:
        """:func:`plan_outputs` for this folder (``files``: names relative to it, or paths inside it)."""
        return plan_outputs(self.path, files, self.overwrite, record_name, tool, self.what)

    def staging(self, name: str) -> Path:
        """A fresh staging folder inside the claimed folder (removed on exit; a killed run's, by the next run)."""
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=self.path))
        self._staging.append(folder)
        (folder / STAGING_MARKER).write_text(f"{PRODUCER} staging folder of process {os.getpid()}\n")
        return folder

    def _release(self) -> None:
        for folder in self._staging:
            shutil.rmtree(folder, ignore_errors=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
            os.close(self._fd)
            self._fd = None
        for folder in self._created:  # a refused or failed run leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()

    def __exit__(self, *exc: object) -> None:
        self._release()


@contextlib.contextmanager
def claim_run_folder(
    path: str | Path,
    overwrite: bool,
    record_name: str,
    tool: str,
    entries: Iterable[str],
    record: dict[str, Any] | None = None,
    what: str = "--out",
) -> Iterator[OutputFolder]:
    """Claim a driver's folder (the demo, the utility protocol) whose fixed top-level ``entries`` it rebuilds.

    Claimed and locked as :class:`OutputFolder`. A folder that holds anything without this tool's record is
    refused (the driver owns the whole folder). With ``overwrite`` the previous run's recorded entries are
    deleted (nothing else in the folder: the user's files beside them stay), then the new record is written at
    once, listing ``entries``, so a later ``--overwrite`` knows the folder is ours even when this run stops
    half-way.
    """
    entries = list(entries)
    with OutputFolder(path, overwrite, what) as claimed:
        if not (claimed.path / record_name).exists():
            theirs = sorted(p.name for p in claimed.path.iterdir() if p.name != LOCK_NAME)
            if theirs:  # a driver owns its whole folder: one that holds files no run of ours recorded is refused
                raise DataError(
                    f"{what} {claimed.path} holds files that no earlier run of {tool} recorded (e.g. {theirs[0]}); "
                    "choose an empty or new folder"
                )
        plan = claimed.plan(entries, record_name, tool=tool)
        plan.remove_existing()
        write_run_record(claimed.path / record_name, {"tool": tool, **(record or {}), "outputs": entries})
        yield claimed


def check_output_files(
    paths: Iterable[str | Path], overwrite: bool, ours: Callable[[Path], bool] | None = None, what: str = "--out"
) -> None:
    """Check single output files (reports, a checkpoint) before any expensive work.

    Each file's folder must be (or become) a writable folder (:func:`check_output_dir`), the file must not be a
    folder or a symbolic link, and an existing file is replaced only with ``overwrite``, and then only if
    ``ours(path)`` says this project wrote it (``--overwrite`` never replaces someone else's file).

    Raises:
        DataError: a folder that is a file or not writable, an output that is a folder or a link, a foreign file.
        FileExistsError: an output exists and ``overwrite`` is False (naming every such file).
    """
    existing = []
    for path in map(Path, paths):
        check_not_link(path.parent, f"{what} {path}: folder")
        check_not_link(path, what)
        check_output_dir(path.parent, what=f"{what} {path}: folder")
        if path.is_dir():
            raise DataError(f"{what} {path} is an existing folder; name a file")
        if path.exists():
            if overwrite and ours is not None and not ours(path):
                raise DataError(
                    f"{what} {path} exists and was not written by this project; --overwrite only replaces our "
                    "own outputs: move it away or choose another name"
                )
            existing.append(str(path))
    if existing and not overwrite:
        raise FileExistsError(f"output exists: {', '.join(existing)}; pass --overwrite to replace it")
