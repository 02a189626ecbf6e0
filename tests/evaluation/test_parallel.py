"""``--jobs``: seeded segmenter trainings in worker processes give the numbers of one process, in task order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.parallel import run_tasks
from evaluation.segmenter import Case
from evaluation.utility import train_and_test

NAMES = ["background", "a", "b"]


def _cases(seed: int, n: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = torch.randint(0, 3, (1, 8, 8, 8), generator=gen)
        image = label.float() / 2 + 0.1 * torch.rand(1, 8, 8, 8, generator=gen)
        out.append(
            Case(id=f"c{seed}_{i}", image_path=Path(f"c{i}.nii.gz"), image=image, label=label, affine=np.eye(4))
        )
    return out


def test_run_tasks_refuses_no_workers() -> None:
    with pytest.raises(ValueError, match="--jobs"):
        run_tasks(train_and_test, [], jobs=0)


@pytest.mark.slow  # starting two spawned workers (each imports torch and MONAI) costs seconds
def test_two_workers_give_the_numbers_of_one() -> None:
    test = _cases(99, 2)
    tasks = [(_cases(seed, 2), test, NAMES, 3, seed) for seed in (0, 1, 2)]
    serial = run_tasks(train_and_test, tasks, jobs=1)
    parallel = run_tasks(train_and_test, tasks, jobs=2)
    assert [r["mean"] for r in parallel] == [r["mean"] for r in serial]
    assert [r["loss_last_10pct"] for r in parallel] == [r["loss_last_10pct"] for r in serial]
    assert len({r["loss_last_10pct"] for r in serial}) == 3  # the seeds differ: the check can fail
