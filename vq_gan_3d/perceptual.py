"""Frozen 2D LPIPS (VGG16) for slices of 3D volumes, built from local weight files only.

LPIPS (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) via the ``lpips`` package. Two weight sources:

- the linear heads ship inside the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``);
- the VGG16 backbone is torchvision's ImageNet ``vgg16`` file ``vgg16-397923af.pth``, looked up in the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) or at an explicit path.

Nothing is ever downloaded. Fixes of the reference (reference-notes §6.10, §6.25): no dropout, and the network
stays in eval mode whatever ``train()`` is called with.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"
# lpips.pretrained_networks.vgg16 slices torchvision's `features` into five blocks at these indices.
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def default_vgg16_path() -> Path:
    """Where torchvision caches the ImageNet VGG16 weights: ``<torch hub dir>/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def missing_weights_message(path: Path) -> str:
    """Error text telling the user which file is missing and how to get it onto an offline machine."""
    return (
        f"LPIPS needs the torchvision ImageNet VGG16 weights {VGG16_FILENAME}, not found at {path}. "
        "On a machine with internet run `python scripts/fetch_weights.py --only lpips` (or "
        "`python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"`; "
        f"both save {VGG16_FILENAME} to ~/.cache/torch/hub/checkpoints/), then copy the file to {path} "
        "(or set model.vgg_weights_path). For CPU demos/tests set model.perceptual_random_weights=true "
        "or model.perceptual_weight=0."
    )


def _vgg_state_to_lpips(vgg_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ``features.{i}.*`` keys to lpips' ``net.slice{k}.{i}.*`` keys."""
    out = {}
    for k, (lo, hi) in enumerate(_VGG_SLICES, start=1):
        for i in range(lo, hi):
            for name in ("weight", "bias"):
                key = f"features.{i}.{name}"
                if key in vgg_state:
                    out[f"net.slice{k}.{i}.{name}"] = vgg_state[key]
    return out


def _lpips_heads() -> dict[str, torch.Tensor]:
    """The package's calibrated linear heads, renamed for heads built without dropout.

    lpips' own loader uses ``strict=False`` and the shipped keys are ``lin{k}.model.1.weight`` (index 1 behind a
    Dropout), so ``LPIPS(use_dropout=False)`` would silently keep random heads; hence this explicit remap.
    """
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.replace(".model.1.", ".model.0."): v for k, v in state.items()}


class SlicePerceptualLoss(nn.Module):
    """LPIPS-VGG distance between batches of 2D slices; frozen, always in eval mode, no dropout.

    Args:
        random_weights: use a randomly initialised VGG16 backbone (tests / CPU demos; logs a warning). The
            calibrated linear heads are always loaded (they ship with the package).
        vgg_weights_path: torchvision ``vgg16`` ImageNet state dict; default :func:`default_vgg16_path`.

    Raises:
        FileNotFoundError: pretrained backbone requested but the weights file is missing (the message names it).
    """

    def __init__(self, random_weights: bool = False, vgg_weights_path: str | Path | None = None) -> None:
        super().__init__()
        import lpips

        state: dict[str, torch.Tensor] = {}
        if not random_weights:
            path = Path(vgg_weights_path).expanduser() if vgg_weights_path else default_vgg16_path()
            if not path.is_file():
                raise FileNotFoundError(missing_weights_message(path))
            state = _vgg_state_to_lpips(torch.load(path, map_location="cpu", weights_only=True))
            if len(state) != 26:  # 13 conv layers x (weight, bias)
                raise ValueError(f"{path} is not a torchvision vgg16 state dict ({len(state)} of 26 conv tensors)")
        else:
            log.warning("LPIPS uses a RANDOM VGG16 backbone (perceptual_random_weights=true): for tests/demos only")
        # Build on the meta device: lpips constructs a full torchvision VGG16 (incl. its unused 120M-parameter
        # classifier) only to keep `.features`; random-initialising that costs seconds. Then allocate and fill.
        with warnings.catch_warnings(), torch.device("meta"):  # lpips passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, use_dropout=False, verbose=False)
        net = net.to_empty(device="cpu")
        net.scaling_layer.load_state_dict(lpips.lpips.ScalingLayer().state_dict())
        if random_weights:
            for m in net.net.modules():
                if isinstance(m, nn.Conv2d):  # torchvision's VGG init
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        state.update(_lpips_heads())
        missing, unexpected = net.load_state_dict(state, strict=False)
        # Only the fixed input scaling (and, with random_weights, the backbone) may stay as constructed;
        # `lins.{k}` aliases `lin{k}` (same tensors, listed twice in lpips' state dict).
        allowed = ("scaling_layer.", "lins.", "net.") if random_weights else ("scaling_layer.", "lins.")
        not_loaded = [k for k in missing if not k.startswith(allowed)]
        if not_loaded or unexpected:
            raise RuntimeError(f"LPIPS weights did not load cleanly: missing {not_loaded}, unexpected {unexpected}")
        self.net = net.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SlicePerceptualLoss:
        """Stay in eval mode: this network is a fixed metric, never trained."""
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS per slice pair.

        Args:
            a: (N, C, H, W) slices in [-1, 1]; C = 1 is repeated to the 3 channels VGG expects.
            b: (N, C, H, W) slices in [-1, 1].

        Returns:
            (N,) distances (gradients flow to the inputs, not to the network).
        """
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] not in (1, 3):
            raise ValueError(
                f"expected two (N, 1|3, H, W) tensors of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}"
            )
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.net(a, b).flatten()
