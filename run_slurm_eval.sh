#!/usr/bin/env bash
# Evaluate on Slurm: one array task per unit and run id (eval.py), then an aggregation job writing
# results_avg_std.json (mean and std over the runs) and the table beside the paper's. See docs/slurm.md.
#
#   bash run_slurm_eval.sh --datasets mvtec visa --runs 0-4        # the published checkpoints (weights/)
#   bash run_slurm_eval.sh --datasets demo --runs 0-1 --from-training results   # a training run's
#
# Options are eval.py's (--datasets, --category, --version, --weights-path | --from-training,
# --results-path, --batch, --save-images, ...); relative paths are relative to the repository root.
# Script options: --runs 0-4 | 0,2,4 (default 0), --max-parallel K, --redo, --no-slurm, --dry-run,
# --sbatch FLAGS... (the rest goes to sbatch). Resources: SSN_GPUS (default 0: none requested),
# SSN_CPUS (8), SSN_MEM (32G), SSN_TIME (08:00:00), SSN_PARTITION, SSN_SBATCH_ARGS, SSN_MAX_PARALLEL.
# Resubmitting skips units whose row is in last.csv (newer than the weights); --redo evaluates all.
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm/common.sh"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 0
fi
ssn_batch eval "$@"
