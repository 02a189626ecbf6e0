#!/usr/bin/env bash
# The labels stage on a Slurm cluster (the fixed layout has no room for a third top-level launcher, so it lives
# here). Submit from the repository root; the first argument picks the part, Hydra overrides follow:
#   sbatch scripts/labels.sh ae experiment=duke_labels_ae
#   sbatch scripts/labels.sh diffusion experiment=duke_labels_diffusion model.label_ae_ckpt=runs/label_ae/.../last.ckpt
# Preemption and requeue work as for vqgan.sh: SIGUSR1 120 s before the end, hpc_ckpt_N.ckpt, same job folder.
#SBATCH --job-name=medlsdm-labels
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
PART=${1:-}
case "$PART" in
  ae) ENTRY=train.train_label_ae; TASK=label_ae ;;
  diffusion) ENTRY=train.train_label_diffusion; TASK=label_diffusion ;;
  *) echo "usage: sbatch scripts/labels.sh ae|diffusion [hydra overrides]" >&2; exit 2 ;;
esac
shift
# shellcheck disable=SC1091
source "${MEDLSDM_REPO:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm_common.sh"
