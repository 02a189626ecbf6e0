"""Download every pretrained weight file the project can use into the folder its loaders search.

    python scripts/fetch_weights.py                           # all of them, into the torch hub cache
    python scripts/fetch_weights.py --only lpips fid3d        # some of them
    python scripts/fetch_weights.py --dest weights/           # elsewhere (then pass --weights-dir weights/)
    python scripts/fetch_weights.py --list                    # what would be fetched, and from where

Meant for a cluster login node with internet when the compute nodes have none: run it once there, and every
later run (training, evaluation, on any node that shares the home folder) finds the files offline. The files:

- ``lpips``: torchvision's ImageNet VGG16 ``vgg16-397923af.pth``, the trunk ``lpips.LPIPS(net="vgg")`` loads
  (LPIPS metric and the VQ-GAN perceptual loss; LPIPS's own linear layers ship inside the ``lpips`` package);
- ``fid``: pytorch-fid's FID InceptionV3 ``pt_inception-2015-12-05-6726825d.pth``;
- ``fid3d``: Tencent MedicalNet's ResNet-50 (23 datasets) ``resnet_50_23dataset.pth`` (3D-FID, privacy audit).

The default destination is the torch hub cache ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/
checkpoints``), where ``evaluation/weights.py``, ``lpips``/``torchvision`` and ``vq_gan_3d/perceptual.py`` look.
Each file is streamed to a temporary file beside its destination, its sha256 is checked against the prefix in
its name (the torch hub convention) before it is moved into place, and a file already there is verified
instead of downloaded again. The MedicalNet file has no published hash: its digest is printed and recorded in
``DEST/med-lsdm-weights.json`` so later copies can be compared with it.

The destination follows the output-folder contract of every command (``dataset.files``): it is claimed with a lock
for the run (two fetches into one folder cannot interleave), a destination or a weight file that is a symbolic link
is refused (nothing is written through a link; the default torch hub folder is taken as the path it resolves to,
since every loader reads it through its links anyway), each file is written atomically and listed in the record.
``--force`` downloads again and replaces a file this tool recorded, or one whose content is not the published file
(its sha256 does not start with the prefix in its name, e.g. a saved error page); any other file of that name is
someone else's and is never replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dataset import DataError
from dataset.cli import ArgumentParser, check_unique, run_cli
from dataset.files import (
    OutputFolder,
    atomic_write,
    check_not_link,
    file_sha256,
    read_run_record,
    recorded_outputs,
    write_run_record,
)
from evaluation import weights as W
from evaluation.cli_common import HelpFormatter

log = logging.getLogger("fetch_weights")

RECORD_NAME = "med-lsdm-weights.json"
TOOL = "scripts/fetch_weights.py"
CHUNK = 1 << 20
PROGRESS_BYTES = 64 << 20
TIMEOUT_S = 60.0

#: ``opener(url, timeout=...)`` returns a readable binary stream usable as a context manager (``urlopen``).
Opener = Callable[..., BinaryIO]


def _check_digest(digest: str, prefix: str | None, what: str) -> str:
    """One line on how the digest was checked; DataError when it does not match the published prefix."""
    if prefix is None:
        return "no published hash: sha256 recorded, not checked"
    if not digest.startswith(prefix):
        raise DataError(f"{what}: sha256 {digest[:16]}... does not start with {prefix}: corrupt or not the file")
    return f"sha256 starts with {prefix} as published"


def download(
    url: str,
    dest: Path,
    sha256_prefix: str | None = None,
    opener: Opener = urllib.request.urlopen,
    timeout: float = TIMEOUT_S,
) -> str:
    """Stream ``url`` into ``dest`` atomically, checking its sha256 before it is moved into place.

    Args:
        url: source (``https://``; ``file://`` works too, which is what the tests use).
        dest: destination file; its folder is created.
        sha256_prefix: leading hex digits the file's sha256 must have, or None (digest only returned).
        opener: ``urllib.request.urlopen`` or a stand-in with the same call.
        timeout: seconds to wait for the connection.

    Returns:
        The hex sha256 of the downloaded file.

    Raises:
        DataError: the download failed or the hash does not match (nothing is left at ``dest`` or beside it).
    """
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        size = 0
        try:
            with opener(url, timeout=timeout) as src, open(tmp, "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                    # a sign of life on slow links each time another PROGRESS_BYTES have arrived
                    if size // PROGRESS_BYTES > (size - len(block)) // PROGRESS_BYTES:
                        log.info("%s: %d MiB so far", dest.name, size >> 20)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(f"{url}: download failed ({err})") from None
        _check_digest(digest.hexdigest(), sha256_prefix, url)

    atomic_write(dest, write, overwrite=True)
    return digest.hexdigest()


def fetch(
    spec: W.WeightSpec,
    dest_dir: Path,
    force: bool = False,
    opener: Opener = urllib.request.urlopen,
    recorded: frozenset[str] = frozenset(),
) -> dict:
    """Make sure ``spec``'s file is in ``dest_dir``: verify it when present, else download it.

    Args:
        spec: the weight file.
        dest_dir: its folder.
        force: download again; a present file is replaced only when ``recorded`` lists it or its content fails the
            published hash (it is not that file), never otherwise (it is someone else's).
        opener: ``urllib.request.urlopen`` or a stand-in.
        recorded: the file names the folder's record lists (written by this tool).

    Returns:
        What was done: ``{"key", "file", "path", "url", "action": "downloaded" | "present", "sha256", "check"}``.

    Raises:
        DataError: download failure, hash mismatch, a file that is a link, a present file that fails its check
            (use ``force``), or a present file ``force`` may not replace.
    """
    path = Path(dest_dir) / spec.filename
    check_not_link(path, "--dest entry")
    if path.exists() and not path.is_file():
        raise DataError(f"--dest entry {path} is not a file; move it away")
    present = path.is_file()
    if present:
        digest = file_sha256(path)
        try:
            check = _check_digest(digest, spec.sha256_prefix, str(path))
            published = True
        except DataError as err:
            if not force:
                raise DataError(f"{err}; fetch it again with --force") from None
            published = False
        if force and published and spec.filename not in recorded:
            raise DataError(
                f"{path} was not written by fetch_weights (not in its {RECORD_NAME}) and is not known to be broken; "
                "--force never replaces it: move it away to download it again"
            )
    if present and not force:
        action = "present"
    else:
        log.info("%s: downloading %s", spec.key, spec.url)
        digest = download(spec.url, path, spec.sha256_prefix, opener)
        check = _check_digest(digest, spec.sha256_prefix, str(path))
        action = "downloaded"
    return {
        "key": spec.key,
        "file": spec.filename,
        "path": str(path),
        "url": spec.url,
        "action": action,
        "sha256": digest,
        "check": check,
    }


def fetch_all(
    specs: list[W.WeightSpec], dest_dir: Path, force: bool = False, opener: Opener = urllib.request.urlopen
) -> list[dict]:
    """:func:`fetch` each spec into the claimed ``dest_dir`` and record the digests in its ``med-lsdm-weights.json``.

    Raises:
        DataError: ``dest_dir`` is a link, a file, unwritable or in use by another run; its record file is not ours
            or another tool's; a failed :func:`fetch`.
    """
    with OutputFolder(dest_dir, what="--dest") as claimed:
        record_path = claimed.path / RECORD_NAME
        check_not_link(record_path, "--dest entry")
        record = read_run_record(record_path)
        if record_path.exists() and (record is None or record.get("tool") != TOOL):
            raise DataError(f"{record_path} exists and is not a record of {TOOL}; choose another --dest")
        recorded = frozenset(p.name for p in recorded_outputs(record_path))
        done = []
        for spec in specs:
            item = fetch(spec, claimed.path, force, opener, recorded)
            log.info("%s: %s %s (sha256 %s; %s)", spec.key, item["action"], item["path"], item["sha256"],
                     item["check"])  # fmt: skip
            done.append(item)
        previous: dict[str, Any] = (record or {}).get("files", {})
        files = {k: v for k, v in previous.items() if isinstance(v, dict)} | {d["file"]: d for d in done}
        # only what this tool downloaded is "ours": a verified file someone else put here stays theirs
        ours = sorted((recorded & set(files)) | {d["file"] for d in done if d["action"] == "downloaded"})
        write_run_record(record_path, {"tool": TOOL, "files": files, "outputs": ours})
    log.info("recorded the digests in %s", record_path)
    return done


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = ArgumentParser(prog="fetch_weights", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(W.ALL_WEIGHTS),
        default=None,
        metavar="NAME",
        help=f"which files, by the metric that needs them: {', '.join(sorted(W.ALL_WEIGHTS))} (default: all)",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="destination folder (default: the torch hub cache $TORCH_HOME/hub/checkpoints, where every loader "
        "looks; another folder must be passed as --weights-dir to evaluation)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="download again, replacing a file this tool recorded or one that fails its published hash",
    )
    p.add_argument("--list", action="store_true", help="only list the files, their sources and destinations")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    return p


def _command(args: argparse.Namespace, _argv: list[str]) -> None:
    # the default is the hub cache every loader reads through its links: its real path; a --dest link is refused
    dest = args.dest if args.dest is not None else W.hub_checkpoint_dir().resolve()
    specs = [W.ALL_WEIGHTS[k] for k in check_unique(args.only or sorted(W.ALL_WEIGHTS), "--only")]
    if args.list:
        for spec in specs:
            sha = f"sha256 {spec.sha256_prefix}..." if spec.sha256_prefix else "no published sha256"
            log.info("%s: %s <- %s (%s; %s)", spec.key, dest / spec.filename, spec.url, sha, spec.source)
        return
    fetch_all(specs, dest, args.force)
    if args.dest is not None:
        log.info("pass --weights-dir %s to evaluation (model.vgg_weights_path=%s for training)", dest,
                 dest / W.VGG16.filename)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for a failed download or a bad file, in one line)."""
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
