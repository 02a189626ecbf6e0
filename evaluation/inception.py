"""2D FID feature extractor: pytorch-fid's InceptionV3 (FID weights), pool3 2048-d features of slices.

The pytorch-fid convention: input in [0, 1], 3 channels, bilinear resize to 299x299 (``align_corners=False``),
scaled to [-1, 1] inside the network, output of the final average pool (2048-d). Grey slices are repeated
to 3 channels.

pytorch-fid's ``fid_inception_v3()`` downloads its weights. To load them from a local file instead, the same
network is assembled here from pytorch-fid's own FID blocks (``FIDInceptionA/C/E_1/E_2``, exactly as
``fid_inception_v3`` does) and handed to pytorch-fid's ``InceptionV3`` wrapper in place of the downloading
builder, so the forward pass (resize, normalisation, block split) is pytorch-fid's. A test checks that the
assembled network and pytorch-fid's builder have the same state-dict layout.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from evaluation import weights as W

FEATURE_DIM = 2048


def fid_inception_structure() -> nn.Module:
    """The FID InceptionV3 trunk (torchvision Inception3 patched with pytorch-fid's blocks), random weights."""
    from pytorch_fid import inception as pfi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's init_weights / weights deprecation chatter
        net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def _random_trunk() -> nn.Module:
    # pytorch-fid builds the trunk with init_weights=False (PyTorch's default init); with identity batch-norm
    # statistics that shrinks activations to ~1e-8 by pool3. He init keeps random features O(1).
    net = fid_inception_structure()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net


def build_inception(
    weights_dir: Path | None, random_weights: bool = False, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """pytorch-fid ``InceptionV3`` returning pool3 features, with local or random weights.

    Args:
        weights_dir: extra folder searched before the torch hub cache.
        random_weights: random init instead of the FID weights (plumbing tests only).
        device: where the network runs.

    Returns:
        (network in eval mode, weight record for the report).

    Raises:
        MissingWeightsError: the FID weight file is absent and ``random_weights`` is False.
    """
    from pytorch_fid import inception as pfi

    if random_weights:
        trunk, record = W.seeded(_random_trunk), W.random_record(W.INCEPTION)
    else:
        path = W.resolve(W.INCEPTION, weights_dir)  # fail before building anything
        state, record = W.load_state_dict(W.INCEPTION, path)
        trunk = fid_inception_structure()
        trunk.load_state_dict(state, strict=True)
    with mock.patch.object(pfi, "fid_inception_v3", return_value=trunk):
        model = pfi.InceptionV3(
            output_blocks=[pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]], resize_input=True, normalize_input=True
        )
    record["network"] = "pytorch_fid.inception.InceptionV3 (FID Inception, pool3 2048-d)"
    return model.eval().to(device), record


@torch.no_grad()
def slice_features(model: nn.Module, slices: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Inception pool3 features of grey slices.

    Args:
        model: from :func:`build_inception`.
        slices: (N, H, W) in [0, 1].
        batch_size: slices per forward pass.

    Returns:
        (N, 2048) float32 on the CPU.
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, slices.shape[0], batch_size):
        batch = slices[start : start + batch_size].to(device=device, dtype=torch.float32)
        batch = batch[:, None].expand(-1, 3, -1, -1)  # grey -> RGB by repetition
        feats = model(batch)[0]  # (B, 2048, 1, 1)
        out.append(feats.flatten(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)
