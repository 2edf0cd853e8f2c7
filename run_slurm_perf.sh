#!/usr/bin/env bash
# The paper's inference benchmark (perf/perf_main.py: reference and fast paths) as one Slurm job:
#
#   SSN_GPUS=1 bash run_slurm_perf.sh v100s --check          # perf_v100s.csv, perf_v100s_fast.csv
#   SSN_GPUS=1 SSN_PARTITION=gpu bash run_slurm_perf.sh h100 --sbatch --constraint=h100
#   bash run_slurm_perf.sh cpu --device cpu                  # no sbatch (or SSN_NO_SLURM=1): runs here
#
# <gpu_model> names the machine in the file names; other options are perf_main.py's. The CSVs go to
# the repository root (perf_main.py --output-dir to change). Script options: --no-slurm, --dry-run,
# --sbatch FLAGS... (the rest goes to sbatch). Resources: SSN_GPUS (default 0: none requested; the
# paper's protocol needs 1), SSN_CPUS (10), SSN_MEM (32G), SSN_TIME (10:00:00), SSN_PARTITION,
# SSN_SBATCH_ARGS; the node is taken whole (--exclusive) unless SSN_EXCLUSIVE=0. Log: logs/ssn-perf-<gpu_model>-<job>.out.
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm/common.sh"
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "" | -*) usage >&2; echo "error: the first argument is the machine's name (<gpu_model>)" >&2; exit 2 ;;
esac
ssn_parse_args "$@"
cd "$SSN_ROOT" || ssn_die "cannot enter $SSN_ROOT"
slurm=1
ssn_use_slurm || slurm=0
ssn_setup_env
if [ "$slurm" = 0 ]; then
    exec "$SSN_PY" -u perf/perf_main.py "${SSN_ARGS[@]}"
fi
ssn_resources 10 32G 10:00:00
exclusive=(--exclusive)
[ "${SSN_EXCLUSIVE:-1}" = 0 ] && exclusive=()
mkdir -p "$SSN_LOG_DIR"
job_id=$(ssn_sbatch --job-name="ssn-perf-${SSN_ARGS[0]}" --nodes=1 ${exclusive[@]+"${exclusive[@]}"} --chdir="$SSN_ROOT" \
    --output="$SSN_LOG_DIR/%x-%j.out" --open-mode=append "${SSN_RES[@]}" ${SSN_USER_SBATCH[@]+"${SSN_USER_SBATCH[@]}"} \
    "$SSN_ROOT/slurm/perf.sh" "${SSN_ARGS[@]}") || exit $?
echo "Submitted benchmark job $job_id; log $SSN_LOG_DIR/ssn-perf-${SSN_ARGS[0]}-$job_id.out"
echo "submitted job=$job_id"
