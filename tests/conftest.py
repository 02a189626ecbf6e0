"""Test-wide settings: one intra-op thread, seeded RNGs, quiet Lightning."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch

# One thread: the tensors are tiny, and with two OpenMP threads on a loaded 2-core machine the threads
# spin-wait on each other (a 4 s test took 136 s). MEDLSDM_TEST_THREADS=N to change it.
torch.set_num_threads(int(os.environ.get("MEDLSDM_TEST_THREADS", "1")))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
logging.getLogger("lightning_fabric").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# The tiny trained checkpoints, registered here once so that the tests of every package share them.
from tests.tiny_checkpoints import tiny_label_model, tiny_model  # noqa: E402, F401
