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


def train_label_generator(
    out: Path,
    ae_minutes: float,
    diffusion_minutes: float,
    common: list[str],
    commands: list[str],
    output: Path | None = None,
    dataset: str = "mni152",
) -> None:
    """The label autoencoder, then the label diffusion on its best checkpoint, into ``out/label_{ae,diffusion}``.

    ``common``: Hydra overrides for both (data folder, extra settings); ``output`` as for :func:`run`; ``dataset``:
    the embedded dataset whose experiments ``<dataset>_labels_{ae,diffusion}_cpu`` run.
    """
    py = sys.executable
    run([py, "-m", "train.train_label_ae", f"experiment={dataset}_labels_ae_cpu",
         f"paths.output_dir={out / 'label_ae'}", f"trainer.max_time={max_time(ae_minutes)}", *common],
        commands, output)  # fmt: skip
    run([py, "-m", "train.train_label_diffusion", f"experiment={dataset}_labels_diffusion_cpu",
         f"model.label_ae_ckpt={best_checkpoint(out / 'label_ae' / 'checkpoints')}",
         f"paths.output_dir={out / 'label_diffusion'}", f"trainer.max_time={max_time(diffusion_minutes)}",
         *common], commands, output)  # fmt: skip


class Background:
    """A function run in a thread beside the main stages; :meth:`wait` re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.error: BaseException | None = None

        def target() -> None:
            try:
                fn()
            except BaseException as err:  # handed to wait(), in the main thread
                self.error = err

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def dataset_config(data_dir: Path, dataset: str = "mni152") -> DictConfig:
    """The embedded dataset's config, as the training stages compose it."""
    from hydra import compose, initialize_config_dir

    from train.run import CONFIG_DIR  # lazily: Lightning is not needed to run stages

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("vqgan", overrides=[f"dataset={dataset}", f"paths.data_dir={data_dir}"])
    return cfg.dataset
