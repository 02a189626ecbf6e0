"""2D slice and 3D volume PatchGAN discriminators (reference-notes §1.7) on top of MONAI's PatchDiscriminator.

MONAI's ``PatchDiscriminator`` (monai>=1.4) is the pix2pixHD PatchGAN the reference copied: a stride-2 conv +
LeakyReLU(0.2), ``num_layers - 1`` stride-2 conv + BatchNorm + LeakyReLU layers, one stride-1 such layer and a
stride-1 conv to one logit map, channels doubling from ``channels`` (64 -> 128 -> 256 -> 512 for 3 layers); it
returns every intermediate output, which feature matching needs. Differences from the reference, all minor:
the last conv pads 1 instead of 2, the normalised convs have no bias (BatchNorm makes it redundant), and BatchNorm
keeps no running statistics. The discriminators only ever run in training mode (batch statistics), so the
reference's running averages were never used; without them no rank-local buffers diverge under DDP.
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn


class PatchGAN(nn.Module):
    """PatchGAN discriminator returning its logit map and intermediate features.

    Args:
        spatial_dims: 2 for the slice discriminator, 3 for the volume discriminator.
        in_channels: image channels.
        channels: width of the first conv (64 in the paper).
        num_layers: normalised conv layers (3 in the paper); intermediate features = ``num_layers + 1``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or channels < 1 or num_layers < 1:
            raise ValueError(
                f"in_channels, channels and num_layers must be >= 1, got {in_channels}, {channels}, {num_layers}"
            )
        self.num_layers = num_layers
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=num_layers,
            kernel_size=4,
            norm=("BATCH", {"track_running_stats": False}),
            padding=2,  # pix2pixHD's ceil((k - 1) / 2)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, C, [D,] H, W) -> (logits (B, 1, [d,] h, w), ``num_layers + 1`` intermediate feature maps)."""
        outputs = self.net(x)
        return outputs[-1], outputs[:-1]
