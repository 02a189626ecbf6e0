"""vqgan.sh and diffusion.sh on a real one-node Slurm started by the test session (scripts/slurm_local.sh).

The launchers run unchanged: the local node advertises a fake GPU so their ``#SBATCH --gpus-per-node=1`` is
accepted, and the jobs get tiny CPU overrides on the command line (as a user would pass experiment overrides).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.helpers import REPO, TINY_DIFFUSION, TINY_VQGAN

pytestmark = pytest.mark.slow
# Resources of the local test node (the launchers ask for a cluster node's worth; the command line wins).
SMALL = ["--cpus-per-task=2", "--mem=4G", "--time=00:20:00", "--open-mode=append"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        pytest.skip("Slurm is not installed and installing it needs root")
    sdir = f"/tmp/medlsdm-slurm-{os.getpid()}"
    env = dict(os.environ, SLURM_DIR=sdir, FAKE_GPUS="1")
    subprocess.run(["bash", "scripts/slurm_local.sh", "up"], cwd=REPO, env=env, check=True, timeout=300)
    venv_bin = str(Path(sys.executable).parent)
    job_env = dict(
        os.environ,
        SLURM_CONF=f"{sdir}/slurm.conf",
        VIRTUAL_ENV=str(Path(sys.executable).parents[1]),
        PATH=f"{venv_bin}:{os.environ['PATH']}",
        OMP_NUM_THREADS="1",  # one thread trains faster than two on a 2-core machine (see scripts/demo.py)
    )
    yield job_env
    subprocess.run(["bash", "scripts/slurm_local.sh", "down"], cwd=REPO, env=env, check=False, timeout=120)


def _sbatch(env: dict[str, str], script: str, log: Path, args: list[str], wait: bool = True) -> str:
    cmd = ["sbatch", "--parsable", *SMALL, f"--output={log}"] + (["--wait"] if wait else []) + [script, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr}\n--- job log ---\n{out[-6000:]}"
    return proc.stdout.strip().split(";")[0]


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_sbatch_vqgan_then_diffusion(slurm: dict[str, str], tmp_path: Path) -> None:
    vq_out, diff_out = tmp_path / "vqgan", tmp_path / "diffusion"
    data = f"paths.data_dir={tmp_path / 'data'}"
    _sbatch(
        slurm,
        "vqgan.sh",
        tmp_path / "vqgan.log",
        [*TINY_VQGAN, "trainer.max_steps=4", f"paths.output_dir={vq_out}", data],
    )
    log = (tmp_path / "vqgan.log").read_text()
    assert "[slurm] job" in log  # the launcher's banner: the job really ran through vqgan.sh
    assert _step(vq_out / "checkpoints" / "last.ckpt") == 4
    _sbatch(
        slurm,
        "diffusion.sh",
        tmp_path / "diffusion.log",
        [
            *TINY_DIFFUSION,
            "trainer.max_steps=3",
            f"paths.output_dir={diff_out}",
            data,
            f"model.first_stage_ckpt={vq_out / 'checkpoints' / 'last.ckpt'}",
        ],
    )
    assert _step(diff_out / "checkpoints" / "last.ckpt") == 3


def test_sbatch_labels_ae_then_diffusion(slurm: dict[str, str], tmp_path: Path) -> None:
    """scripts/labels.sh, the labels stage's launcher: both parts as real jobs, the second on the first's output."""
    from tests.train.helpers import TINY_LABELS

    ae_out, diff_out = tmp_path / "label_ae", tmp_path / "label_diffusion"
    data = f"paths.data_dir={tmp_path / 'data'}"
    tiny = [*TINY_LABELS, "trainer.max_steps=3", data]
    _sbatch(slurm, "scripts/labels.sh", tmp_path / "ae.log", ["ae", *tiny, "model=label_ae_tiny",
            f"paths.output_dir={ae_out}"])  # fmt: skip
    assert "[slurm] job" in (tmp_path / "ae.log").read_text()
    assert _step(ae_out / "checkpoints" / "last.ckpt") == 3
    _sbatch(slurm, "scripts/labels.sh", tmp_path / "diffusion.log", ["diffusion", *tiny, "model=label_diffusion_tiny",
            "model.stats_batches=2", f"model.label_ae_ckpt={ae_out / 'checkpoints' / 'last.ckpt'}",
            f"paths.output_dir={diff_out}"])  # fmt: skip
    assert _step(diff_out / "checkpoints" / "last.ckpt") == 3


def test_preempted_job_is_requeued_and_resumes(slurm: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "vqgan"
    log = tmp_path / "job.log"
    max_steps = 200
    job = _sbatch(
        slurm,
        "vqgan.sh",
        log,
        [
            *TINY_VQGAN,
            f"trainer.max_steps={max_steps}",
            f"paths.output_dir={out}",
            f"paths.data_dir={tmp_path / 'data'}",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "callbacks.volume_logger.every_n_val_epochs=1000",
        ],
        wait=False,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600  # generous: the machine may be busy
    while not last.exists():  # training is under way once the first periodic checkpoint lands
        assert time.time() < deadline, f"no checkpoint before the deadline\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    # Pre-emption as Slurm does it before a time limit (--signal=SIGUSR1@120): USR1 to the job's steps.
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)
    while True:  # wait for the requeued job to run to completion and leave the queue
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=slurm, capture_output=True, text=True)
        if not state.stdout.strip() and _step(last) == max_steps:
            break
        assert time.time() < deadline, f"job {job} did not finish after requeue\n{log.read_text()[-6000:]}"
        time.sleep(1)
    text = log.read_text()
    assert "restart 1" in text, text[-4000:]  # the batch script ran a second time (same job id)
    hpc = sorted(out.glob("hpc_ckpt_*.ckpt"))
    assert hpc, "Lightning did not write its requeue checkpoint"
    assert 0 < _step(hpc[-1]) < max_steps
    # The second run resumed (not restarted) from the newest checkpoint: the requeue checkpoint, or last.ckpt when
    # the periodic checkpoint landed after the signal (Lightning saves on USR1, then trains on until SIGTERM).
    second = text[text.index("restart 1") :]
    resumed = second.split("resuming from ", 1)[1].split()[0]
    assert resumed in (str(hpc[-1]), str(last)), second[:2000]
    assert "Restored all states from the checkpoint" in second
