"""Classifier-free guidance (Ho & Salimans, https://arxiv.org/abs/2207.12598) with label maps.

Training: each sample's label map is replaced by the *null map* with probability ``p_uncond``
(:func:`drop_labels`). The null map is the all-zero map (B, K, D, H, W), fed through the same label encoder as real
maps: a valid one-hot map sums to 1 at every voxel, so zeros are unambiguous, the encoder's biases turn them into a
learned "no label" feature map, and every denoiser variant (SPADE, concat, MONAI) handles it without extra
parameters.

Sampling: ``pred = u + w·(c − u)`` with c the prediction given the label map and u the one given the null map.
w = 1 is purely conditional (one network pass), w = 0 purely unconditional (one pass); otherwise both run in one
batch of 2B. The reference computed ``c + s·(c − u)`` with ``cond_scale`` s = 1.5, i.e. w = 1 + s = 2.5
(:func:`cond_scale_to_guidance`), and its null branch was never trained (no label dropout).
"""

from __future__ import annotations

import torch

from diffusion.denoiser_base import Denoiser


def cond_scale_to_guidance(cond_scale: float) -> float:
    """The reference's ``cond_scale`` s (``c + s·(c − u)``) as our guidance weight w (``u + w·(c − u)``): 1 + s."""
    return 1.0 + cond_scale


def drop_labels(seg: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each sample's label map by the null (all-zero) map with probability ``p_uncond``.

    Args:
        seg: (B, K, D, H, W) one-hot label maps.
        p_uncond: per-sample drop probability in [0, 1].
        generator: RNG on ``seg``'s device (None → global RNG).

    Returns:
        (B, K, D, H, W), a new tensor; dropped samples are all zero.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    keep = torch.rand(seg.shape[0], device=seg.device, generator=generator) >= p_uncond
    return seg * keep.to(seg.dtype).view(-1, 1, 1, 1, 1)


def combine(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """``uncond + guidance·(cond − uncond)``."""
    return uncond + guidance * (cond - uncond)


class GuidedDenoiser:
    """``denoise(x, t)`` for the samplers: a denoiser with its label map encoded once and guidance folded in.

    Args:
        denoiser: the network.
        seg: (B, K, D, H, W) one-hot label maps.
        guidance: w of ``u + w·(c − u)``; must be >= 0.
    """

    def __init__(self, denoiser: Denoiser, seg: torch.Tensor, guidance: float) -> None:
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.denoiser = denoiser
        # an unconditional network has no label branch: one pass whatever the weight
        self.guidance = guidance if denoiser.conditional else 1.0
        self.cond = denoiser.encode_labels(seg) if self.guidance != 0.0 else None
        self.uncond = denoiser.encode_labels(torch.zeros_like(seg)) if self.guidance != 1.0 else None
        # Both branches in one batch: concatenated once, so every step sees the *same* feature tensor (a SPADE
        # modulation cache keyed on it then hits at every step).
        self.both = torch.cat((self.cond, self.uncond)) if self.cond is not None and self.uncond is not None else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, d, h, w), t: (B,) → guided prediction (B, C, d, h, w)."""
        if self.uncond is None:
            return self.denoiser(x, t, label_features=self.cond)
        if self.cond is None:
            return self.denoiser(x, t, label_features=self.uncond)
        # label features of batch 2B for latents of batch B: the label-free part of the network runs once
        out = self.denoiser(x, t, label_features=self.both)
        c, u = out.chunk(2)
        return combine(c, u, self.guidance)
