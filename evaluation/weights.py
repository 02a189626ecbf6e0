"""Where the pretrained weight files come from, how they are found, and what the report says about them.

Nothing here downloads. A weight file is looked for, by its exact name, in ``--weights-dir`` (when given)
and then in the torch hub cache ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``),
where ``torch.hub`` / ``torchvision`` would have cached it. When it is absent the error names the file, the
folders searched, where to get it, and how to skip the metric.

``random_weights=True`` (CLI ``--random-weights``) builds the same networks with random initialisation. It
exists to test the plumbing without the files; the numbers it produces mean nothing, and the report says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained weight file.

    Attributes:
        filename: exact file name looked for.
        url: where to download it by hand.
        used_by: metric(s) that need it and the ``--metrics`` name(s) to leave out to skip it.
        sha256_prefix: leading hex digits of the file's sha256 (torch hub naming convention), or None.
    """

    filename: str
    url: str
    used_by: str
    sha256_prefix: str | None = None


INCEPTION = WeightSpec(
    filename="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    used_by="2D FID (--metrics fid)",
    sha256_prefix="6726825d",
)
VGG16 = WeightSpec(
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth (torchvision VGG16_Weights.IMAGENET1K_V1)",
    used_by="LPIPS (--metrics lpips)",
    sha256_prefix="397923af",
)
MEDICALNET50 = WeightSpec(
    filename="resnet_50_23dataset.pth",
    url=(
        "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50/resolve/main/resnet_50_23dataset.pth "
        "(also linked from github.com/Tencent/MedicalNet and the HA-GAN repository)"
    ),
    used_by="3D-FID (--metrics fid3d) and the privacy audit's feature distance",
)


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file was not found; the message says which, where to put it and where to get it."""


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for weight files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(weights_dir: Path | None) -> list[Path]:
    """Folders searched for weight files, in order."""
    dirs = [Path(weights_dir)] if weights_dir is not None else []
    return dirs + [hub_checkpoint_dir()]


def resolve(spec: WeightSpec, weights_dir: Path | None) -> Path:
    """Path of a weight file.

    Raises:
        MissingWeightsError: not in any search folder.
    """
    dirs = search_dirs(weights_dir)
    for folder in dirs:
        candidate = folder / spec.filename
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"pretrained weights for {spec.used_by.split(' (')[0]} not found: file '{spec.filename}' is in none of "
        f"{', '.join(str(d) for d in dirs)}. Download it from {spec.url} and put it in one of those folders "
        f"(or pass --weights-dir DIR). To run without it, leave the metric out: {spec.used_by}."
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(spec: WeightSpec, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a weight file (``weights_only=True``) and describe it for the report.

    Unwraps a ``{"state_dict": ...}`` container and strips DataParallel ``module.`` prefixes (MedicalNet
    files carry both).

    Returns:
        (state dict, record with path, sha256 and spec fields).

    Raises:
        ValueError: the file's sha256 does not start with the prefix its name promises (corrupt download).
    """
    digest = sha256_file(path)
    if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix):
        raise ValueError(
            f"{path}: sha256 {digest[:16]}... does not start with {spec.sha256_prefix} as the file name promises; "
            f"the file is corrupt or not {spec.filename}. Download it again from {spec.url}"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    record = {"file": spec.filename, "path": str(path), "sha256": digest, "source": spec.url, "random": False}
    return state, record


def random_record(spec: WeightSpec) -> dict:
    """Report entry for a randomly initialised network (``--random-weights``)."""
    return {
        "file": None,
        "path": None,
        "sha256": None,
        "random": True,
        "note": f"random initialisation instead of {spec.filename}: plumbing test only, numbers are meaningless",
    }


def seeded(build: Callable[[], T], seed: int = RANDOM_WEIGHTS_SEED) -> T:
    """Call a network builder under a fixed seed without disturbing the caller's RNG state.

    Random-weight networks are then the same in every run, so plumbing tests are reproducible.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
