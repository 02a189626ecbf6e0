"""Exponential moving average of the denoiser (weights *and* buffers), on ``torch.optim.swa_utils.AveragedModel``.

Reference behaviour (reference-notes §2.4): decay 0.995, updated every 10 optimiser steps, a hard copy before step
2000. Its bugs are not reproduced: the average covers the denoiser only (never the frozen first stage), buffers are
averaged too, and the copy stays in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(nn.Module):
    """EMA copy of a module: ``ema ← decay·ema + (1 − decay)·model`` every ``update_every`` steps.

    Before ``start_step`` the copy just follows the model (a warm-up, so early random weights do not linger in the
    average). The state (averaged weights and ``n_averaged``) lives in this module's state dict, so it is saved in
    checkpoints and restored on resume.

    Args:
        model: the module to average (deep-copied once here).
        decay: EMA decay in [0, 1).
        update_every: average every this many optimiser steps.
        start_step: copy instead of averaging before this step.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, update_every: int = 10, start_step: int = 2000) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        if update_every < 1 or start_step < 0:
            raise ValueError(f"need update_every >= 1 and start_step >= 0, got {update_every}, {start_step}")
        self.update_every = update_every
        self.start_step = start_step
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged copy (same class as the tracked model)."""
        return self.averaged.module

    def train(self, mode: bool = True) -> EMA:
        """Keep the copy in eval mode whatever the parent does (it is only ever used for inference)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimiser step number ``step`` (1-based)."""
        if step % self.update_every:
            return
        if step < self.start_step:
            self.module.load_state_dict(model.state_dict())
            return
        self.averaged.update_parameters(model)
