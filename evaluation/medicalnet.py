"""3D-FID feature extractor: MedicalNet ResNet-50 (23 datasets), global-average-pooled 2048-d features.

Built with MONAI's ``resnet50`` in MedicalNet's configuration: 1 input channel, 7x7x7 stem with stride 2,
shortcut type B without bias, no classification head (``feed_forward=False`` → global average pool). MONAI's
ResNet strides layer3 and layer4 by 2, but MedicalNet (Chen et al. 2019, github.com/Tencent/MedicalNet
``models/resnet.py``) keeps them at stride 1 with dilation 2 and 4; the weights have the same shapes either
way, so after construction those convolutions are switched to MedicalNet's stride/dilation/padding. The
features are then those of the original network (as used by HA-GAN, WDM and the Med-LSDM reference).

Input: one volume (D, H, W) in [0, 1], fed in the project's (D, H, W) axis order as the reference did. No
resizing: global pooling makes the feature size independent of the volume size, but FID values from different
volume sizes, intensity conventions or sample counts are not comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from evaluation import weights as W

FEATURE_DIM = 2048
_DILATION = {"layer3": 2, "layer4": 4}


def medicalnet_structure() -> nn.Module:
    """MONAI ResNet-50 with MedicalNet's settings and dilated layer3/layer4, MONAI's random init."""
    from monai.networks.nets import resnet50

    net = resnet50(
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )
    for name, dilation in _DILATION.items():
        for block in getattr(net, name):
            block.conv2.stride = (1, 1, 1)
            block.conv2.dilation = (dilation,) * 3
            block.conv2.padding = (dilation,) * 3
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1, 1)
    return net


def build_medicalnet(
    weights_dir: Path | None, random_weights: bool = False, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """MedicalNet ResNet-50 feature extractor with local or random weights.

    Args:
        weights_dir: extra folder searched before the torch hub cache.
        random_weights: random init instead of ``resnet_50_23dataset.pth`` (plumbing tests only).
        device: where the network runs.

    Returns:
        (network in eval mode mapping (B, 1, D, H, W) → (B, 2048), weight record for the report).

    Raises:
        MissingWeightsError: the weight file is absent and ``random_weights`` is False.
        ValueError: the file's tensors do not fit the network (other than a dropped ``conv_seg`` head).
    """
    if random_weights:
        net, record = W.seeded(medicalnet_structure), W.random_record(W.MEDICALNET50)
    else:
        path = W.resolve(W.MEDICALNET50, weights_dir)
        state, record = W.load_state_dict(W.MEDICALNET50, path)
        # MedicalNet's segmentation head is not part of the feature extractor.
        head = sorted(k for k in state if k.startswith("conv_seg."))
        state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
        net = medicalnet_structure()
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a MedicalNet ResNet-50 state dict (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        record["dropped_keys"] = head
    record["network"] = (
        "monai.networks.nets.resnet50 with MedicalNet settings (shortcut B, no bias, stem stride 2, "
        "layer3/4 stride 1 dilation 2/4), global average pool, 2048-d"
    )
    record["input"] = "one volume (1, 1, D, H, W) in [0, 1], (D, H, W) axis order, no resizing"
    return net.eval().to(device), record


@torch.no_grad()
def volume_features(model: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """Global-pooled features of one volume.

    Args:
        model: from :func:`build_medicalnet`.
        volume: (D, H, W) in [0, 1].

    Returns:
        (1, 2048) float32 on the CPU.
    """
    device = next(model.parameters()).device
    return model(volume[None, None].to(device=device, dtype=torch.float32)).flatten(1).cpu()
