#!/usr/bin/env bash
# The aggregation job of a batch submission (docs/slurm.md), started after every array task ended
# (--dependency=afterany): python slurm/aggregate.py MANIFEST_FOLDER --log-pattern PATTERN.
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" 2>/dev/null || source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"
folder=${1:?usage: aggregate.sh MANIFEST_FOLDER [LOG_PATTERN]}
cd "$SSN_ROOT" || exit 2
echo "=== $(date '+%F %T') aggregating $folder${SLURM_JOB_ID:+ (job $SLURM_JOB_ID)}"
exec "$SSN_PY" slurm/aggregate.py "$folder" --log-pattern "${2:-}"
