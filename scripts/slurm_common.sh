#!/usr/bin/env bash
# Shared body of vqgan.sh and diffusion.sh (sourced inside the Slurm job; not a job script itself).
# Expects: ENTRY (python module to run), TASK (run name), and the job's arguments in "$@".
set -euo pipefail
REPO=${MEDLSDM_REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}
cd "$REPO"
if [ ! -f train/train_vqgan.py ]; then
  echo "run sbatch from the repository root, or set MEDLSDM_REPO to it (now: $REPO)" >&2
  exit 2
fi
# Use the caller's active environment (sbatch exports it); otherwise set up/reuse the project's cached one.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  # shellcheck disable=SC1091
  source scripts/setup_env.sh
fi
NTASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-1}
NNODES=${SLURM_NNODES:-1}
if [ $((NTASKS_PER_NODE * NNODES)) -gt 1 ]; then STRATEGY=ddp; else STRATEGY=auto; fi
# One output folder per job id: a requeued job (same id) finds its own checkpoints and resumes (ckpt_path=last).
OUT=${MEDLSDM_OUTPUT_DIR:-runs/${TASK}/slurm-${SLURM_JOB_ID:-local}}
echo "[slurm] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} nodes ${NNODES} tasks/node ${NTASKS_PER_NODE} -> ${OUT}"
# Lightning reads the Slurm environment itself: each srun task is one DDP rank; devices must equal the tasks per
# node. Later overrides win, so anything the user passes in "$@" beats these defaults.
srun python -m "$ENTRY" \
  paths.output_dir="$OUT" \
  trainer.devices="$NTASKS_PER_NODE" \
  trainer.num_nodes="$NNODES" \
  trainer.strategy="$STRATEGY" \
  ckpt_path=last \
  "$@"
