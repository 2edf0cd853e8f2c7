#!/usr/bin/env bash
# The benchmark job of run_slurm_perf.sh: python perf/perf_main.py <gpu_model> [options].
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" 2>/dev/null || source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"
cd "$SSN_ROOT" || exit 2
echo "=== $(date '+%F %T') benchmark on $(hostname -s)${SLURM_JOB_ID:+ (job $SLURM_JOB_ID)}: perf_main.py $*"
exec "$SSN_PY" -u perf/perf_main.py "$@"
