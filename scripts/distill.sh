#!/usr/bin/env bash
# Few-step distillation on a Slurm cluster (the fixed layout has no room for another top-level launcher, so it lives
# here beside scripts/labels.sh). Submit from the repository root; Hydra overrides follow the script:
#   sbatch scripts/distill.sh experiment=mni152_distill_cpu model.teacher_ckpt=runs/diffusion/slurm-1234/checkpoints/last.ckpt
# Preemption and requeue work as for diffusion.sh: SIGUSR1 120 s before the end, hpc_ckpt_N.ckpt, same job folder;
# the teacher pairs cached in that folder are reused, only missing ones are made.
#SBATCH --job-name=medlsdm-distill
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=SIGUSR1@120
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
ENTRY=train.train_distill
TASK=distill
# shellcheck disable=SC1091
source "${MEDLSDM_REPO:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm_common.sh"
