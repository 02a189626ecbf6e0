"""Latent normalisation between the VQ-GAN encoder and the diffusion: ``z_n = (z − shift) / scale``.

Modes:

* ``"std"`` (default): shift and scale are the mean and standard deviation of training latents, per channel or
  global, measured at the start of training over a few batches (the CompVis ``scale_by_std`` idea, plus a shift),
  so the diffusion sees roughly unit-variance data whatever the VQ-GAN's latent scale.
* ``"codebook_minmax"`` (reference, reference-notes §1.11): ``2·(z − min E)/(max E − min E) − 1`` with min/max of
  the whole codebook tensor E, i.e. shift = (max + min)/2, scale = (max − min)/2. Encoder outputs can exceed the
  codebook range, so normalised latents are not strictly inside [−1, 1].
* ``"none"``: identity.

Shift, scale and a ``fitted`` flag are buffers: saved in checkpoints, restored on resume, never re-measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

LATENT_NORMS = ("std", "codebook_minmax", "none")


class LatentNormalizer(nn.Module):
    """Per-channel affine map of latents (B, C, d, h, w) with persisted statistics.

    Args:
        channels: latent channels C.
        mode: "std", "codebook_minmax" or "none".
        per_channel: "std" mode only: one mean/std per channel (True) or one for all channels (False).
    """

    def __init__(self, channels: int, mode: str = "std", per_channel: bool = True) -> None:
        super().__init__()
        if mode not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {mode!r}")
        self.mode = mode
        self.per_channel = per_channel
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("fitted", torch.tensor(mode == "none"))

    @property
    def is_fitted(self) -> bool:
        """Whether the statistics are set (always true for mode "none")."""
        return bool(self.fitted)

    def _view(self, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return v.to(z.dtype).view(1, -1, *([1] * (z.dim() - 2)))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder latent (B, C, d, h, w) → diffusion space."""
        return (z - self._view(self.shift, z)) / self._view(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space (B, C, d, h, w) → encoder latent space."""
        return z * self._view(self.scale, z) + self._view(self.shift, z)

    @torch.no_grad()
    def fit_codebook(self, codebook: torch.Tensor) -> None:
        """Set the reference's min/max statistics from the codebook embeddings (n_codes, C)."""
        if self.mode != "codebook_minmax":
            raise ValueError(f"fit_codebook needs mode 'codebook_minmax', this normaliser is {self.mode!r}")
        lo, hi = codebook.min().float(), codebook.max().float()
        if hi <= lo:
            raise ValueError("codebook has no spread (max == min); cannot min/max-normalise")
        self.shift.fill_(float((hi + lo) / 2))
        self.scale.fill_(float((hi - lo) / 2))
        self.fitted.fill_(True)

    @torch.no_grad()
    def fit_std(
        self, latents: Iterable[torch.Tensor], all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """Set mean/std from latent batches (B, C, d, h, w), accumulated in float64.

        Args:
            latents: the batches.
            all_reduce: sums a tensor over processes (DDP), so every rank ends with the same statistics.
        """
        if self.mode != "std":
            raise ValueError(f"fit_std needs mode 'std', this normaliser is {self.mode!r}")
        c = self.shift.numel()
        acc = torch.zeros(3, c, dtype=torch.float64, device=self.shift.device)  # count, sum, sum of squares
        for z in latents:
            if z.dim() < 3 or z.shape[1] != c:
                raise ValueError(f"latents must be (B, {c}, ...), got {tuple(z.shape)}")
            z = z.detach().to(acc.device, torch.float64).transpose(0, 1).reshape(c, -1)
            acc += torch.stack(
                (torch.full((c,), z.shape[1], dtype=acc.dtype, device=acc.device), z.sum(1), (z * z).sum(1))
            )
        if all_reduce is not None:
            acc = all_reduce(acc)
        if acc[0, 0] < 2:
            raise ValueError("need at least two latent values to estimate a standard deviation")
        if not self.per_channel:
            acc = acc.sum(1, keepdim=True)
        n, s, ss = acc
        mean = s / n
        std = (ss / n - mean**2).clamp(min=0).sqrt()
        if (std < 1e-6).any():
            log.warning("latent channel(s) with ~zero spread %s; their scale is clamped to 1e-6", std.tolist())
        self.shift.copy_(mean.float().expand(c))
        self.scale.copy_(std.clamp(min=1e-6).float().expand(c))
        self.fitted.fill_(True)
        log.info(  # 3 significant digits: the exact values are in the checkpoint, the log is for reading
            "latent normalisation (std): mean [%s], std [%s]",
            ", ".join(f"{v:.3g}" for v in self.shift.tolist()),
            ", ".join(f"{v:.3g}" for v in self.scale.tolist()),
        )
