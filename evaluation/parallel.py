"""Independent, seeded segmenter trainings in worker processes (``--jobs`` of the utility tools).

Each task seeds everything it draws from its own arguments (``SegConfig.seed``, the subject draw), so a task's
result does not depend on which process runs it or in what order: ``jobs=N`` gives the numbers of ``jobs=1``.
Workers are started with ``spawn`` (no inherited thread pools) and each uses ``threads`` intra-op threads; on a
CPU the fastest setting for these small 3D networks is one thread per worker and one worker per core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one): the default ``--jobs``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_tasks(
    fn: Callable[..., T], tasks: Sequence[tuple[Any, ...]], jobs: int = 1, threads: int = 1, desc: str = "runs"
) -> list[T]:
    """``[fn(*task) for task in tasks]``, in ``jobs`` worker processes when ``jobs > 1``; results in task order.

    ``fn`` must be a module-level function and the tasks picklable (they are sent to the workers). A progress
    bar counts finished tasks, and each is logged (a long experiment shows how far it is in a log file too).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    results: dict[int, T] = {}
    bar = tqdm(total=len(tasks), desc=desc, disable=None)

    def done(i: int, result: T) -> None:
        results[i] = result
        bar.update()
        logger.info("%s: %d/%d done", desc, len(results), len(tasks))

    if jobs == 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            done(i, fn(*task))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_init_worker,
                                 initargs=(threads,)) as pool:  # fmt: skip
            futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    bar.close()
    return [results[i] for i in range(len(tasks))]
