"""The interface every denoiser implements, and the label-map handling they share.

A denoiser maps a noisy latent and a timestep, conditioned on a one-hot label map at *image* resolution, to a
prediction with the latent's shape::

    forward(x (B, C, d, h, w), t (B,), cond (B, K, D, H, W) | None) -> (B, C, d, h, w)

The label map first goes through a :class:`~diffusion.label_encoder.LabelEncoder` aligned with the VQ-GAN latent.
``cond=None`` means "no label map": the all-zero map, which is also what classifier-free guidance trains with for
dropped samples (see ``diffusion.guidance``). Samplers evaluate the network hundreds of times on the same map, so
they encode it once with :meth:`Denoiser.encode_labels` and pass ``label_features`` instead of ``cond``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from diffusion.label_encoder import LabelEncoder

CONDITIONINGS = ("spade", "concat", "none")


class Denoiser(nn.Module):
    """Base class: owns the label encoder; subclasses implement :meth:`predict` on label features.

    Args:
        channels: latent channels C (the VQ-GAN's ``embedding_dim``).
        label_nc: K, one-hot classes.
        latent_factor: (fd, fh, fw) image-to-latent downsampling of the VQ-GAN.
        conditioning: "spade" (label features modulate norms), "concat" (label features concatenated to the
            input), or "none" (unconditional; ``cond`` is ignored).
        label_encoder: "conv" (learned, the reference's segconv) or "pool" (class fractions per latent voxel).
        label_channels: output channels of the conv label encoder.
        label_hidden: hidden channels of the conv label encoder stages.
        extra_channels: input channels concatenated to the noisy latent by the caller (0 normally; C + 1 for a
            stage 2 with ``inpaint_inputs``: the masked real latent and the region mask,
            :mod:`diffusion.inpaint_inputs`). The prediction keeps C channels.
    """

    def __init__(
        self,
        channels: int,
        label_nc: int,
        latent_factor: Sequence[int],
        conditioning: str = "spade",
        label_encoder: str = "conv",
        label_channels: int = 64,
        label_hidden: Sequence[int] = (64, 128),
        extra_channels: int = 0,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if extra_channels < 0:
            raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
        self.channels = channels
        self.extra_channels = int(extra_channels)
        self.label_nc = label_nc
        self.conditioning = conditioning
        self.label_encoder = (
            LabelEncoder(label_nc, latent_factor, label_encoder, label_channels, label_hidden)
            if conditioning != "none"
            else None
        )
        self.latent_factor = tuple(int(f) for f in latent_factor)

    @property
    def in_channels(self) -> int:
        """Input channels: the latent's C plus :attr:`extra_channels`."""
        return self.channels + self.extra_channels

    @property
    def conditional(self) -> bool:
        """Whether the output depends on the label map."""
        return self.label_encoder is not None

    @property
    def label_channels(self) -> int:
        """Channels of the label features (0 for an unconditional denoiser)."""
        return self.label_encoder.out_channels if self.label_encoder is not None else 0

    @property
    def shares_latent(self) -> bool:
        """Whether :meth:`predict` takes label features of batch k·B for latents of batch B (see ``Unet3D``)."""
        return False

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """(d, h, w): every latent size this network takes is a multiple of these (its down-sampling)."""
        return (1, 1, 1)

    def null_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The "no label map" input for latents ``x`` (B, C, d, h, w): zeros (B, K, d·fd, h·fh, w·fw).

        A valid one-hot map sums to 1 at every voxel, so the all-zero map cannot be confused with any real one.
        """
        size = [s * f for s, f in zip(x.shape[2:], self.latent_factor)]
        return x.new_zeros(x.shape[0], self.label_nc, *size)

    def encode_labels(self, seg: torch.Tensor) -> torch.Tensor | None:
        """seg: (B, K, D, H, W) → label features (B, C_label, D/fd, H/fh, W/fw), or None if unconditional."""
        if self.label_encoder is None:
            return None
        return self.label_encoder(seg)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        label_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy latent.

        Args:
            x: (B, C + extra_channels, d, h, w) noisy latent (and the extra inputs after it).
            t: (B,) timesteps (long for DDPM/DDIM; long or float for rectified flow).
            cond: (B, K, D, H, W) one-hot label map at image resolution, or None for the null map.
            label_features: precomputed :meth:`encode_labels` output; takes precedence over ``cond``. Its batch may
                be k·B: k label maps for each latent (all items of map 1, then of map 2, ...); the output is then
                (k·B, C, d, h, w), as for the latents repeated k times.

        Returns:
            (B, C, d, h, w) prediction (noise, x0, v or velocity, depending on the objective).
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, d, h, w), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if label_features is None and self.conditional:
            label_features = self.encode_labels(cond if cond is not None else self.null_labels(x))
        if label_features is not None and label_features.shape[0] != x.shape[0] and not self.shares_latent:
            # k label maps per latent (guidance): networks that cannot share the label-free part get k copies
            k = label_features.shape[0] // x.shape[0]
            if k * x.shape[0] != label_features.shape[0]:
                raise ValueError(f"label features of batch {label_features.shape[0]} for latents of {x.shape[0]}")
            x, t = x.repeat(k, 1, 1, 1, 1), t.repeat(k)
        if label_features is not None and label_features.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"label features {tuple(label_features.shape[2:])} do not match the latent grid {tuple(x.shape[2:])}"
            )
        return self.predict(x, t, label_features)

    def predict(self, x: torch.Tensor, t: torch.Tensor, label_features: torch.Tensor | None) -> torch.Tensor:
        """Network body: x (B, C, d, h, w), t (B,), label features (B, C_label, d, h, w) or None → (B, C, d, h, w)."""
        raise NotImplementedError
