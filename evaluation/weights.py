"""Where the pretrained weight files come from, how they are found, and what the report says about them.

Nothing here downloads (``scripts/fetch_weights.py`` does, once, on a machine with internet). A weight file is
looked for, by its exact name, in ``--weights-dir`` (when given) and then in the torch hub cache
``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), where ``torch.hub`` /
``torchvision`` / ``lpips`` would have cached it. When it is absent the error names the file, the folders
searched, the command that fetches it, where it comes from, and how to skip the metric.

``random_weights=True`` (CLI ``--random-weights``) builds the same networks with random initialisation. It
exists to test the plumbing without the files; the numbers it produces mean nothing, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from dataset.files import file_sha256

T = TypeVar("T")
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained weight file.

    Attributes:
        key: short name used by ``scripts/fetch_weights.py --only`` (the metric that needs the file).
        filename: exact file name looked for.
        url: the official download URL (``scripts/fetch_weights.py`` fetches it).
        used_by: metric(s) that need it and the ``--metrics`` name(s) to leave out to skip it.
        sha256_prefix: leading hex digits of the file's sha256 (torch hub naming convention), or None.
        source: who publishes the file, for the report and the README.
    """

    key: str
    filename: str
    url: str
    used_by: str
    sha256_prefix: str | None = None
    source: str = ""


INCEPTION = WeightSpec(
    key="fid",
    filename="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    used_by="2D FID (--metrics fid)",
    sha256_prefix="6726825d",
    source="pytorch-fid release fid_weights (the TF FID Inception graph ported to PyTorch)",
)
VGG16 = WeightSpec(
    key="lpips",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    used_by="LPIPS (--metrics lpips; also the VQ-GAN perceptual loss)",
    sha256_prefix="397923af",
    source="torchvision VGG16_Weights.IMAGENET1K_V1, the trunk lpips.LPIPS(net='vgg') loads",
)
MEDICALNET50 = WeightSpec(
    key="fid3d",
    filename="resnet_50_23dataset.pth",
    url="https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50/resolve/main/resnet_50_23dataset.pth",
    used_by="3D-FID (--metrics fid3d) and the privacy audit's feature distance",
    source="Tencent MedicalNet ResNet-50 pretrained on 23 datasets (github.com/Tencent/MedicalNet)",
)
#: Every pretrained file the project can use, by ``key``.
ALL_WEIGHTS = {spec.key: spec for spec in (VGG16, INCEPTION, MEDICALNET50)}


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file was not found; the message says which, where to put it and where to get it."""


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for weight files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_command(spec: WeightSpec, weights_dir: Path | None = None) -> str:
    """The command that downloads ``spec`` into the folder the loaders search (shown in every missing-file error)."""
    dest = f" --dest {weights_dir}" if weights_dir is not None else ""
    return f"python scripts/fetch_weights.py --only {spec.key}{dest}"


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
        f"{', '.join(str(d) for d in dirs)}. Fetch it with `{fetch_command(spec, weights_dir)}` (on a machine "
        f"with internet; it downloads {spec.url}), or copy the file into one of those folders (or pass "
        f"--weights-dir DIR). To run without it, leave the metric out: {spec.used_by}."
    )


def available(spec: WeightSpec, weights_dir: Path | None) -> bool:
    """Whether ``spec``'s file is in one of the search folders."""
    try:
        resolve(spec, weights_dir)
    except MissingWeightsError:
        return False
    return True


def load_state_dict(spec: WeightSpec, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a weight file (``weights_only=True``) and describe it for the report.

    Unwraps a ``{"state_dict": ...}`` container and strips DataParallel ``module.`` prefixes (MedicalNet
    files carry both).

    Returns:
        (state dict, record with path, sha256 and spec fields).

    Raises:
        ValueError: the file's sha256 does not start with the prefix its name promises (corrupt download).
    """
    digest = file_sha256(path)
    if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix):
        raise ValueError(
            f"{path}: sha256 {digest[:16]}... does not start with {spec.sha256_prefix} as the file name promises; "
            f"the file is corrupt or not {spec.filename}. Fetch it again: `{fetch_command(spec)} --force`"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    # reports are shared: the folder is named by its role (the hub cache or --weights-dir), not by its path here
    where = "torch hub cache" if Path(path).parent == hub_checkpoint_dir() else "--weights-dir"
    record = {"file": spec.filename, "path": f"{where}/{spec.filename}", "sha256": digest, "source": spec.url,
              "random": False}  # fmt: skip
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
