"""EMA vector-quantisation codebook with persisted data-dependent init, dead-code restart and DDP sync.

Follows the TATS/Med-LSDM codebook (reference-notes §1.5; VQ-VAE EMA updates: van den Oord et al. 2017,
https://arxiv.org/abs/1711.00937, appendix A.1) with these fixes:

- the "initialised" flag is a buffer, so a resumed or re-loaded model never re-initialises (reference bug §6.8);
- the update runs once per call and the LightningModule calls it once per batch (reference ran it twice, §6.9);
- a restarted code also resets its EMA statistics (``N = restart_thres``, ``z_avg = e * N``): the reference only
  replaced the embedding, which the next EMA update immediately recomputed from the stale ``z_avg / N``;
- counts and sums are accumulated with ``bincount``/``index_add`` and the nearest-code search is chunked, so no
  (N_vectors x n_codes) one-hot or distance matrix is held in memory at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_DISTANCE_CHUNK_ELEMENTS = 2**18  # rows * n_codes per chunk of the distance matrix (1 MB in fp32: stays in cache)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class CodebookOutput:
    """What one codebook call returns.

    Attributes:
        z_q: (B, E, d, h, w) quantised latent with straight-through gradient to the input.
        indices: (B, d, h, w) int64 code indices.
        commitment_loss: () ``commitment_cost * MSE(z, sg(e))``.
        perplexity: () ``exp(entropy)`` of this batch's code histogram (n for uniform use of n codes).
        code_usage: () fraction of the codebook used by this batch.
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    code_usage: torch.Tensor


class EMACodebook(nn.Module):
    """Nearest-neighbour codebook updated by exponential moving averages (no codebook gradients).

    All state lives in buffers (``embeddings`` (n, E), ``N`` (n,), ``z_avg`` (n, E), ``initialized`` ()), so it is
    saved, restored and moved with the module and not touched by any optimiser.

    Updates (init, EMA, restart) happen only when the module is in training mode and the caller allows them;
    under ``torch.distributed`` the statistics are all-reduced and random draws are broadcast from rank 0, so every
    rank holds the same codebook.

    Args:
        n_codes: codebook size n.
        embedding_dim: code dimension E.
        decay: EMA decay of counts and sums.
        commitment_cost: beta of the commitment loss.
        restart_thres: codes whose EMA count falls below this are restarted from random current encoder outputs.
        random_restart: enable dead-code restart.
        eps: Laplace smoothing of the counts.
    """

    def __init__(
        self,
        n_codes: int,
        embedding_dim: int,
        decay: float = 0.99,
        commitment_cost: float = 0.25,
        restart_thres: float = 1.0,
        random_restart: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if n_codes < 2 or embedding_dim < 1:
            raise ValueError(f"n_codes must be >= 2 and embedding_dim >= 1, got {n_codes}, {embedding_dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        if commitment_cost < 0 or restart_thres < 0:
            raise ValueError(f"commitment_cost and restart_thres must be >= 0, got {commitment_cost}, {restart_thres}")
        self.n_codes = n_codes
        self.embedding_dim = embedding_dim
        self.decay = decay
        self.commitment_cost = commitment_cost
        self.restart_thres = restart_thres
        self.random_restart = random_restart
        self.eps = eps
        embeddings = torch.randn(n_codes, embedding_dim)
        self.register_buffer("embeddings", embeddings)
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", embeddings.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, z: torch.Tensor, allow_update: bool = True) -> CodebookOutput:
        """Quantise ``z`` and, in training mode, update the codebook once.

        Args:
            z: (B, E, d, h, w) continuous latent.
            allow_update: set False to quantise without touching the codebook even in training mode
                (``VQGANModule.decode`` does).

        Returns:
            :class:`CodebookOutput`; ``z_q`` is float32.
        """
        if z.dim() != 5 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"z must be (B, {self.embedding_dim}, d, h, w), got {tuple(z.shape)}")
        update = self.training and allow_update
        # Distances and EMA statistics in fp32 whatever the autocast context: fp16 sums of squares lose codes.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = z.movedim(1, -1).reshape(-1, self.embedding_dim)  # (N, E)
            if update and not bool(self.initialized):
                self._init_embeddings(flat.detach())
            indices = self._nearest(flat.detach())  # (N,)
            z_q = F.embedding(indices, self.embeddings).view(*z.shape[:1], *z.shape[2:], -1).movedim(-1, 1)
            commitment_loss = self.commitment_cost * F.mse_loss(z, z_q.detach())
            if update:
                self._ema_update(flat.detach(), indices)
            z_st = z + (z_q - z).detach()  # straight-through: forward = codes, backward = identity to z
            counts = torch.bincount(indices, minlength=self.n_codes).float()
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            usage = (counts > 0).float().mean()
        return CodebookOutput(z_st, indices.view(z.shape[0], *z.shape[2:]), commitment_loss, perplexity, usage)

    @torch.no_grad()
    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared L2) per row of ``flat`` (N, E), computed in row chunks."""
        e_sq = (self.embeddings**2).sum(dim=1)  # (n,)
        chunk = max(1, _DISTANCE_CHUNK_ELEMENTS // self.n_codes)
        out = []
        for rows in flat.split(chunk):
            dists = (rows**2).sum(dim=1, keepdim=True) - 2 * rows @ self.embeddings.t() + e_sq
            out.append(dists.argmin(dim=1))
        return torch.cat(out)

    def _random_vectors(self, flat: torch.Tensor) -> torch.Tensor:
        """``n_codes`` random rows of ``flat`` (tiled with small noise when it has fewer), identical on all ranks."""
        n, dim = flat.shape
        if n < self.n_codes:
            repeats = math.ceil(self.n_codes / n)
            flat = flat.repeat(repeats, 1)
            flat = flat + torch.randn_like(flat) * (0.01 / math.sqrt(dim))
        picked = flat[torch.randperm(flat.shape[0], device=flat.device)[: self.n_codes]].contiguous()
        if _dist_ready():
            dist.broadcast(picked, src=0)
        return picked

    @torch.no_grad()
    def _init_embeddings(self, flat: torch.Tensor) -> None:
        """Data-dependent init from the first training batch (broadcast from rank 0 under DDP)."""
        picked = self._random_vectors(flat)
        self.embeddings.copy_(picked)
        self.z_avg.copy_(picked)
        self.N.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step of counts and sums, Laplace-smoothed re-estimate of the codes, then dead-code restart."""
        n_total = torch.bincount(indices, minlength=self.n_codes).float()  # (n,)
        encode_sum = torch.zeros_like(self.z_avg).index_add_(0, indices, flat)  # (n, E)
        if _dist_ready():
            dist.all_reduce(n_total)
            dist.all_reduce(encode_sum)
        self.N.mul_(self.decay).add_(n_total, alpha=1 - self.decay)
        self.z_avg.mul_(self.decay).add_(encode_sum, alpha=1 - self.decay)
        total = self.N.sum()
        smoothed = (self.N + self.eps) / (total + self.n_codes * self.eps) * total
        self.embeddings.copy_(self.z_avg / smoothed.unsqueeze(1))
        if self.random_restart:
            # Drawn every step (as the reference) so all ranks consume the same random numbers.
            candidates = self._random_vectors(flat)
            dead = self.N < self.restart_thres  # identical on all ranks: N is built from all-reduced counts
            # Restart the statistics with the code, at the threshold: unused next step, it is dead again.
            self.embeddings[dead] = candidates[dead]
            self.z_avg[dead] = candidates[dead] * self.restart_thres
            self.N[dead] = self.restart_thres
