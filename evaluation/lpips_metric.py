"""LPIPS (VGG, v0.1, the ``lpips`` package) on slices, with weights from local files only.

LPIPS expects RGB in [-1, 1]: each (H, W) slice in [0, 1] becomes ``2 x - 1`` repeated to 3 channels.
The distance of a volume pair is the mean LPIPS over its slices along D (every ``slice_step``-th).

``lpips.LPIPS(net="vgg")`` would fetch the ImageNet VGG16 trunk through torchvision (a download when it is
not cached). The module is therefore built on the meta device (no allocation, no download) and filled
explicitly: the VGG16 convolutions from ``vgg16-397923af.pth`` (local file or hub cache) and the linear
calibration layers from the ``weights/v0.1/vgg.pth`` file that ships inside the ``lpips`` package.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from dataset.files import file_sha256
from evaluation import weights as W

MIN_SLICE = 16  # VGG16 pools 4 times before LPIPS's last tap


def _lin_weights_path() -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def lpips_structure() -> nn.Module:
    """An ``lpips.LPIPS(net="vgg")`` module with uninitialised parameters (built on the meta device)."""
    import lpips

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecated ``pretrained`` argument
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    # The constant input-scaling buffers were created on the meta device too: rebuild them with values.
    model.scaling_layer = lpips.ScalingLayer()
    return model


def _vgg_features_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    # lpips splits torchvision's ``features`` Sequential into slice1..slice5 that keep the original indices.
    target: dict[str, torch.Tensor] = {}
    for slice_name, module in model.net.named_children():
        for idx, _ in module.named_children():
            for param in ("weight", "bias"):
                key = f"features.{idx}.{param}"
                if key in state:
                    target[f"{slice_name}.{idx}.{param}"] = state[key]
    missing, _ = model.net.load_state_dict(target, strict=False)
    if missing:
        raise ValueError(f"{path}: not a torchvision VGG16 state dict (missing features for {missing[:4]})")


def build_lpips(
    weights_dir: Path | None, random_weights: bool = False, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """LPIPS-VGG with local or random weights.

    Args:
        weights_dir: extra folder searched for ``vgg16-397923af.pth`` before the torch hub cache.
        random_weights: random VGG trunk instead of ImageNet weights (plumbing tests only); the linear layers
            still come from the ``lpips`` package, which always ships them.
        device: where the network runs.

    Returns:
        (module in eval mode, weight record for the report).
    """
    lin_path = _lin_weights_path()
    if random_weights:
        model, record = W.seeded(_random_lpips), W.random_record(W.VGG16)
    else:
        path = W.resolve(W.VGG16, weights_dir)
        state, record = W.load_state_dict(W.VGG16, path)
        model = lpips_structure()
        _vgg_features_into(model, state, path)
    lins = torch.load(lin_path, map_location="cpu", weights_only=True)
    for key, value in lins.items():
        m = re.fullmatch(r"lin(\d)\.model\.1\.weight", key)
        if m is None:
            raise ValueError(f"{lin_path}: unexpected key {key}")
        model.lins[int(m.group(1))].model[1].weight.data.copy_(value)
    record["lpips_linear_layers"] = {"path": f"lpips package/{lin_path.name}", "sha256": file_sha256(lin_path)}
    record["network"] = "lpips.LPIPS(net='vgg', version='0.1')"
    return model.eval().requires_grad_(False).to(device), record


def _random_lpips() -> nn.Module:
    model = lpips_structure()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model


@torch.no_grad()
def lpips_slices(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """LPIPS of corresponding slices.

    Args:
        model: from :func:`build_lpips`.
        x, y: (N, H, W) slices in [0, 1], H and W >= 16.
        batch_size: slice pairs per forward pass.

    Returns:
        (N,) float64 distances on the CPU.
    """
    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(f"expected two (N, H, W) stacks of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[1:]) < MIN_SLICE:
        raise ValueError(f"LPIPS (VGG) needs slices of at least {MIN_SLICE}x{MIN_SLICE}, got {tuple(x.shape[1:])}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, x.shape[0], batch_size):
        a = x[start : start + batch_size].to(device=device, dtype=torch.float32)
        b = y[start : start + batch_size].to(device=device, dtype=torch.float32)
        a = (2.0 * a - 1.0)[:, None].expand(-1, 3, -1, -1)
        b = (2.0 * b - 1.0)[:, None].expand(-1, 3, -1, -1)
        out.append(model(a, b).flatten().double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
