#!/usr/bin/env bash
#SBATCH --job-name=ssn-eval
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=08:00:00
#SBATCH --output=slurm-%x-%j.out
# Evaluate the published checkpoints (weights/<run_id>/<dataset>/<category>/weights.pt):
#   sbatch run_slurm_eval.sh                                  (all datasets, run 0)
#   sbatch run_slurm_eval.sh --datasets mvtec --run-ids 0 1 2 3 4
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
bash scripts/setup_env.sh
.venv/bin/python eval.py --device cuda --no-progress "$@"
