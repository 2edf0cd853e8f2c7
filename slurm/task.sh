#!/usr/bin/env bash
# One task of a batch submission (docs/slurm.md): trains or evaluates unit $SLURM_ARRAY_TASK_ID (or
# $SSN_TASK_ID when run plainly) of the manifest in folder $1. Submitted by run_slurm_train.sh and
# run_slurm_eval.sh with --requeue and --signal=B:USR1@<lead>:
#   - a unit that is complete already is skipped;
#   - USR1 (time limit near) and TERM (preemption) are passed on to the training process, which
#     finishes its epoch, writes resume.pt and exits with 3; this task then requeues itself, and only
#     itself (scontrol requeue <array job id>_<task id>), and the next start continues from resume.pt
#     (--resume auto);
#   - every attempt appends its exit code to <manifest>/status/<index> for the aggregation.
# It never sets up the environment nor downloads a dataset: the submitting shell did that.
set -uo pipefail
# shellcheck source=slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" 2>/dev/null \
    || source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"   # sbatch runs a copy of this script from its spool
folder=${1:?usage: task.sh MANIFEST_FOLDER}
index=${SSN_TASK_ID:-${SLURM_ARRAY_TASK_ID:?SLURM_ARRAY_TASK_ID or SSN_TASK_ID must say which unit}}
cd "$SSN_ROOT" || exit 2
EXIT_PREEMPTED=3
# as many compute threads as CPUs were granted (torch would otherwise use every core of the node)
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi

label=$("$SSN_PY" slurm/manifest.py label "$folder" "$index") || exit 2
echo "=== $(date '+%F %T') task $index: $label on $(hostname -s)${SLURM_JOB_ID:+, job $SLURM_JOB_ID}${SLURM_RESTART_COUNT:+, restart $SLURM_RESTART_COUNT}"
note="${SLURM_JOB_ID:+job $SLURM_JOB_ID}${SLURM_RESTART_COUNT:+ restart $SLURM_RESTART_COUNT}"

if "$SSN_PY" slurm/manifest.py complete "$folder" "$index"; then
    echo "$label is complete already: skipped"
    "$SSN_PY" slurm/manifest.py status "$folder" "$index" 0 "complete already $note"
    exit 0
fi

mapfile -d '' -t argv < <("$SSN_PY" slurm/manifest.py argv "$folder" "$index")
[ ${#argv[@]} -gt 0 ] || { echo "no command for task $index in $folder" >&2; exit 2; }
echo "+ python ${argv[*]}"
ssn_forward_run "$SSN_PY" -u "${argv[@]}"
rc=$SSN_RC
"$SSN_PY" slurm/manifest.py status "$folder" "$index" "$rc" "$note"
echo "=== $(date '+%F %T') task $index: $label exited with $rc"

if [ "$rc" = "$EXIT_PREEMPTED" ] && [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${SSN_TASK_ID:-}" ]; then
    # This task alone: in an array, $SLURM_JOB_ID of the first task equals the array's job id, and
    # `scontrol requeue <array job id>` would requeue every task of the array, finished or running.
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
        target="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
        target=$SLURM_JOB_ID
    fi
    echo "preempted with resume.pt written: requeueing task $target (this task only)"
    if said=$(scontrol requeue "$target" 2>&1); then
        echo "requeued $target: it continues from resume.pt when it starts again"
        exit 0
    fi
    # scontrol can answer with an error although the requeue took place: look before saying it failed
    state=$(scontrol show job "$target" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1)
    case "${state#JobState=}" in
        REQUEUED|REQUEUE_HOLD|REQUEUE_FED|PENDING|CONFIGURING)
            echo "requeued $target (state ${state#JobState=}; scontrol said: ${said//$'\n'/ }): it continues from resume.pt"
            exit 0 ;;
    esac
    echo "scontrol requeue $target failed (${said//$'\n'/ }; state ${state#JobState=}): submit the same command again to continue from resume.pt" >&2
fi
exit "$rc"
