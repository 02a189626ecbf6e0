"""Run a pipeline's stages as the commands a user would type: the drivers' (``scripts/demo.py``,
``scripts/utility_protocol.py``) subprocess runner, its failure reporting, and the training stages they share.

Each stage is a subprocess in its own process group, so a failed or interrupted driver takes every stage it
started (and their data-loader workers) with it; its command line is recorded so every number can be reproduced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def max_time(minutes: float) -> str:
    """Lightning's ``trainer.max_time`` (DD:HH:MM:SS) of a budget in minutes."""
    total = max(1, int(round(minutes * 60)))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def best_checkpoint(folder: Path) -> Path:
    """The checkpoint with the best validation loss (``best-<step>.ckpt``), else ``last.ckpt``.

    A latent diffusion builds on the best reconstruction, since it cannot do better than its decoder. Stage 1: in
    the short demo budget the GAN phase, which starts at batch 500, did not beat the validation PSNR reached before
    it. The labels stage: with 16 training maps both the label autoencoder and the label diffusion overfit (their
    validation losses rise after a few hundred steps; the label diffusion's later steps give maps closer to the
    training maps than real held-out maps are), so the label diffusion takes the best autoencoder and generation
    the best label diffusion (README, Paired generation).
    """
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else folder / "last.ckpt"


class StageFailed(RuntimeError):
    """A stage's subprocess exited non-zero: reported in one line by :func:`report_failure`, not a traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def report_failure(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a driver's ``main``: a failed stage is one line (its own error is already above it) and its exit status."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except StageFailed as err:
            log.error("%s", err)
            return err.code
        finally:  # a stage still running beside the failed one (or after SIGTERM) dies with the driver
            stop_children()

    return wrapped


#: Stage processes running now (the main stage and a background one), so the driver can stop them all.
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def stop_children(grace_s: float = 10.0) -> None:
    """Terminate every running stage (SIGTERM, then SIGKILL after ``grace_s``) and wait for it.

    A stage's own children (e.g. data-loader workers) share its process group, which is signalled as a whole.
    """
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def run(cmd: list[str], commands: list[str], output: Path | None = None) -> None:
    """Run one stage; its command line goes into the report so every number can be reproduced.

    ``output``: append the stage's stdout and stderr to this file instead of the console (a stage run beside
    another one, whose console output would interleave).
    """
    shown = shlex.join(cmd).replace(sys.executable, "python")
    commands.append(shown)
    log.info("$ %s%s", shown, f"  (output: {output})" if output else "")
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        sink = None
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(output.open("a"))
        # its own process group, so that stop_children() reaches the stage's children too
        child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if sink else None, start_new_session=True)
        with _CHILDREN_LOCK:
            _CHILDREN.add(child)
        try:
            code = child.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if code != 0:
        where = f"; its output is in {output}" if output else " (its own error is above)"
        raise StageFailed(f"stage failed with exit status {code}: {shown}{where}", code)
    log.info("stage finished in %.0f s: %s", time.time() - t0, shown.split(" ")[2])


def train_stage(
    cmd: list[str], run_dir: Path, steps: int, cap_minutes: float, commands: list[str], output: Path | None = None
) -> str | None:
    """Train one stage for exactly ``steps`` optimizer steps into ``run_dir``, ``cap_minutes`` as a safety stop.

    ``cmd``: the entry point and its overrides (``python -m train.train_x experiment=...``); the output folder, the
    step budget and the time cap are added here. A budget in steps gives the same model on any machine, so the
    drivers' numbers can be reproduced; the cap only keeps a far too slow machine from running on for hours.

    Returns:
        None when the budget was reached; else a one-line note (also logged as a warning) that the cap stopped the
        stage early, for the report: its numbers are not those of the fixed budget.
    """
    budget = [f"paths.output_dir={run_dir}", f"trainer.max_steps={steps}", f"trainer.max_time={max_time(cap_minutes)}"]
    run([*cmd, *budget], commands, output)
    reached = reached_steps(run_dir)
    if reached >= steps:
        return None
    note = (
        f"{run_dir.name} stopped at step {reached} of its budget of {steps}: its safety cap of {cap_minutes:g} min "
        "triggered, so the numbers that depend on it are not those of the fixed budget"
    )
    log.warning("%s", note)
    return note


def reached_steps(run_dir: Path) -> int:
    """The global step of ``run_dir/checkpoints/last.ckpt`` (written when training ends), 0 without one."""
    from dataset.files import read_checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    return int(read_checkpoint(last).get("global_step", 0)) if last.is_file() else 0


def train_label_generator(
    out: Path,
    ae_steps: int,
    diffusion_steps: int,
    cap_minutes: float,
    common: list[str],
    commands: list[str],
    output: Path | None = None,
    dataset: str = "mni152",
) -> list[str]:
    """The label autoencoder, then the label diffusion on its best checkpoint, into ``out/label_{ae,diffusion}``.

    ``*_steps``: each part's step budget, ``cap_minutes`` each one's safety stop (:func:`train_stage`); ``common``:
    Hydra overrides for both (data folder, extra settings); ``output`` as for :func:`run`; ``dataset``: the embedded
    dataset whose experiments ``<dataset>_labels_{ae,diffusion}_cpu`` run. Returns the notes of capped parts.
    """
    py = sys.executable
    notes = [train_stage([py, "-m", "train.train_label_ae", f"experiment={dataset}_labels_ae_cpu", *common],
                         out / "label_ae", ae_steps, cap_minutes, commands, output)]  # fmt: skip
    ae = best_checkpoint(out / "label_ae" / "checkpoints")
    notes.append(train_stage([py, "-m", "train.train_label_diffusion", f"experiment={dataset}_labels_diffusion_cpu",
                              f"model.label_ae_ckpt={ae}", *common],
                             out / "label_diffusion", diffusion_steps, cap_minutes, commands, output))  # fmt: skip
    return [n for n in notes if n]


class Background:
    """A function run in a thread beside the main stages; :meth:`wait` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.result: Any = None

        def target() -> None:
            try:
                self.result = fn()
            except BaseException as err:  # handed to wait(), in the main thread
                self.error = err

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self) -> Any:
        """The function's return value, once it has finished (what it raised is raised here)."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def dataset_config(data_dir: Path, dataset: str = "mni152") -> DictConfig:
    """The embedded dataset's config, as the training stages compose it."""
    from hydra import compose, initialize_config_dir

    from train.run import CONFIG_DIR  # lazily: Lightning is not needed to run stages

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("vqgan", overrides=[f"dataset={dataset}", f"paths.data_dir={data_dir}"])
    return cfg.dataset
