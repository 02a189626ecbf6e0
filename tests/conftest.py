"""Test-wide settings: one intra-op thread, seeded RNGs, quiet Lightning."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

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
def _logger_levels() -> Iterator[None]:
    """Each test starts from the logger levels the session set: a CLI run in-process (the benchmark quietens whole
    packages) must not hide the next test's log records from ``caplog``."""
    manager = logging.root.manager
    before = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lg.setLevel(before.get(name, logging.NOTSET))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# The tiny trained checkpoints, registered here once so that the tests of every package share them.
from tests.tiny_checkpoints import tiny_label_model, tiny_model  # noqa: E402, F401
