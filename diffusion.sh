#!/usr/bin/env bash
# Stage 2 on a Slurm cluster. Submit from the repository root; Hydra overrides follow the script:
#   sbatch diffusion.sh experiment=duke_diffusion model.first_stage_ckpt=runs/vqgan/slurm-1234/checkpoints/last.ckpt
# Preemption: Slurm sends SIGUSR1 120 s before the end; Lightning saves hpc_ckpt_N.ckpt in the run folder and
# requeues the job, which resumes from it (same job id, same folder).
#SBATCH --job-name=medlsdm-diffusion
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=SIGUSR1@120
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
ENTRY=train.train_diffusion
TASK=diffusion
# shellcheck disable=SC1091
source "${MEDLSDM_REPO:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm_common.sh"
