#!/bin/bash
# SLURM job: the paper's inference benchmark (SPEC §6) on one GPU, reference and fast paths.
# Usage: sbatch perf/run_slurm_perf.sh <gpu_model> [extra perf_main.py options]
# e.g.   sbatch perf/run_slurm_perf.sh v100s --check
# Writes perf_<gpu_model>.csv and perf_<gpu_model>_fast.csv into the repository root.
#SBATCH --job-name=ssn-perf
#SBATCH --output=perf_%j_%N.out
#SBATCH --nodes=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=10
#SBATCH --mem-per-gpu=32G
#SBATCH --time=10:00:00
#SBATCH --exclusive

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch perf/run_slurm_perf.sh <gpu_model> [perf_main.py options]" >&2
    exit 2
fi

# sbatch runs a copy of this script; SLURM_SUBMIT_DIR is where it was submitted (the repo root)
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
source .venv/bin/activate

srun --kill-on-bad-exit=1 python -u perf/perf_main.py "$@"
