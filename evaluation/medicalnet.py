"""3D-FID feature extractor: MedicalNet ResNet-50 (23 datasets), global-average-pooled 2048-d features.

Built with MONAI's ``resnet50`` in MedicalNet's configuration: 1 input channel, 7x7x7 stem with stride 2,
shortcut type B without bias, no classification head (``feed_forward=False`` → global average pool). MONAI's
ResNet strides layer3 and layer4 by 2, but MedicalNet (Chen et al. 2019, github.com/Tencent/MedicalNet
``models/resnet.py``) keeps them at stride 1 with dilation 2 and 4; the weights have the same shapes either
way, so after construction those convolutions are switched to MedicalNet's stride/dilation/padding. The
features are then those of the original network (as used by HA-GAN, WDM and the Med-LSDM reference).

Two input conventions (:data:`FID3D_CONVENTIONS`, reported with every value):

- ``project``: the volume in [0, 1], in the project's (D, H, W) axis order, as the Med-LSDM reference fed it.
  Numbers compare with this project's earlier runs.
- ``medicalnet``: MedicalNet's own test-time input (``datasets/brains18.py``): the array in nibabel's stored
  (I, J, K) order, z-scored with the mean and (population) standard deviation of its foreground voxels
  (those above the range's lower bound, i.e. > 0 on the [0, 1] scale; the z-score does not depend on the
  linear map to [0, 1]). MedicalNet fills background voxels with N(0, 1) noise; here they get that noise's
  mean, 0, so the features are deterministic. Numbers compare with MedicalNet-FID papers (WDM-3D, HA-GAN)
  at the same volume size.

No resizing in either: global pooling makes the feature size independent of the volume size, but FID values
from different volume sizes, input conventions or sample counts are not comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dataset import DataError
from evaluation import weights as W

FEATURE_DIM = 2048
FID3D_CONVENTIONS = ("project", "medicalnet")
CONVENTION_TEXT = {
    "project": "one volume (1, 1, D, H, W) in [0, 1], the project's (D, H, W) axis order, no resizing",
    "medicalnet": "MedicalNet's: nibabel (I, J, K) axis order, z-score with the mean/std of the foreground "
    "(voxels > 0 on the [0, 1] scale), background set to 0, no resizing",
}
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
    record["input_conventions"] = dict(CONVENTION_TEXT)
    return net.eval().to(device), record


def network_input(volume: torch.Tensor, convention: str = "project", source: str = "<volume>") -> torch.Tensor:
    """The array fed to MedicalNet under an input convention (module docstring).

    Args:
        volume: (D, H, W) in [0, 1], as loaded by ``dataset.nifti`` (stored (I, J, K) permuted to (K, I, J)).
        convention: ``project`` or ``medicalnet``.
        source: file name quoted in errors.

    Returns:
        ``project``: the (D, H, W) volume; ``medicalnet``: (I, J, K) = (H, W, D) z-scored, float32.

    Raises:
        DataError: ``medicalnet`` on a volume without foreground or with a constant foreground.
    """
    if convention == "project":
        return volume.float()
    if convention != "medicalnet":
        raise ValueError(f"unknown 3D-FID input convention {convention!r}; choose from {FID3D_CONVENTIONS}")
    ijk = volume.permute(1, 2, 0).double()  # (K, I, J) -> (I, J, K), nibabel's get_fdata() order
    foreground = ijk > 0
    pixels = ijk[foreground]
    std = float(pixels.std(unbiased=False)) if pixels.numel() else 0.0
    if std == 0.0:
        raise DataError(
            f"{source}: no foreground, or a constant one, above the range's lower bound: MedicalNet's z-score "
            "is undefined (use --fid3d-convention project)"
        )
    out = (ijk - pixels.mean()) / std
    return torch.where(foreground, out, torch.zeros_like(out)).float()


@torch.no_grad()
def volume_features(
    model: nn.Module, volume: torch.Tensor, convention: str = "project", source: str = "<volume>"
) -> torch.Tensor:
    """Global-pooled features of one volume.

    Args:
        model: from :func:`build_medicalnet`.
        volume: (D, H, W) in [0, 1].
        convention: input convention (:func:`network_input`).
        source: file name quoted in errors.

    Returns:
        (1, 2048) float32 on the CPU.
    """
    device = next(model.parameters()).device
    x = network_input(volume, convention, source)
    return model(x[None, None].to(device=device, dtype=torch.float32)).flatten(1).cpu()
