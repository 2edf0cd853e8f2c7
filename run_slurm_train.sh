#!/usr/bin/env bash
#SBATCH --job-name=ssn-train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=2-00:00:00
#SBATCH --output=slurm-%x-%j.out
# Train one dataset with the paper's configuration:
#   sbatch run_slurm_train.sh mvtec            (or visa, ksdd2, sensum)
#   sbatch run_slurm_train.sh mvtec --run-id 1 --set num_workers=8
# For the paper's five runs: for i in 0 1 2 3 4; do sbatch run_slurm_train.sh mvtec --run-id $i; done
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
bash scripts/setup_env.sh
dataset=${1:?usage: sbatch run_slurm_train.sh <mvtec|visa|ksdd2|sensum> [train.py options]}
shift
.venv/bin/python train.py "$dataset" --device cuda --no-progress "$@"
