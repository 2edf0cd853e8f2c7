#!/usr/bin/env bash
# Train on Slurm: one array task per unit (category, SensumSODF fold) and run id, then an aggregation
# job (mean and std over the runs, the table beside the paper's). See docs/slurm.md.
#
#   bash run_slurm_train.sh mvtec --runs 0-4                  # the paper's 5 runs of MVTec AD
#   bash run_slurm_train.sh sensum --category capsule --max-parallel 4
#   SSN_GPUS=1 SSN_PARTITION=gpu bash run_slurm_train.sh visa --runs 0-4 --sbatch --account=myproj
#   bash run_slurm_train.sh demo --runs 0-1 --set epochs=2     # no sbatch (or SSN_NO_SLURM=1): runs here
#
# <dataset>: mvtec visa ksdd2 sensum folder demo. Other options are train.py's (--category, --version,
# --set, --config, --datasets-folder, --results-path, --no-figures, ...); relative paths are relative to
# the repository root. Script options: --runs 0-4 | 0,2,4 (default 0), --max-parallel K, --signal-lead S,
# --redo, --no-slurm, --dry-run, --sbatch FLAGS... (the rest goes to sbatch).
# Resources (environment): SSN_GPUS (default 0: none requested), SSN_CPUS (8), SSN_MEM (32G),
# SSN_TIME (2-00:00:00), SSN_PARTITION, SSN_SBATCH_ARGS, SSN_MAX_PARALLEL, SSN_SIGNAL_LEAD (120).
# Resubmitting skips complete units (weights.pt there, no resume.pt, row in last.csv); an interrupted
# unit continues from its resume.pt.
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm/common.sh"
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    [ $# -ge 1 ] && exit 0 || exit 2
fi
ssn_batch train "$@"
