# shellcheck shell=bash
# Shared by run_slurm_train.sh, run_slurm_eval.sh, run_slurm_perf.sh and the batch scripts in this
# folder (docs/slurm.md). Sourced, never run. Needs bash >= 4.4.
#
# Script options (anywhere before --sbatch):  --max-parallel K  --signal-lead SECONDS  --no-slurm  --dry-run
#                                              --sbatch FLAGS...  (everything after it goes to sbatch)
# Environment: SSN_GPUS (default 0: no GPU requested), SSN_CPUS, SSN_MEM, SSN_TIME, SSN_PARTITION (empty = omit),
#   SSN_SBATCH_ARGS (extra sbatch flags, split on spaces), SSN_MAX_PARALLEL, SSN_SIGNAL_LEAD (default 120),
#   SSN_NO_SLURM=1 (run plainly), SSN_PYTHON (interpreter; default .venv/bin/python, set up by
#   scripts/setup_env.sh unless SSN_PYTHON or SSN_SKIP_SETUP=1 is set), SSN_AGGREGATE_TIME, SSN_AGGREGATE_MEM,
#   SSN_LOG_DIR (default logs/ in the repository).

SSN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SSN_PY=${SSN_PYTHON:-$SSN_ROOT/.venv/bin/python}
SSN_LOG_DIR=${SSN_LOG_DIR:-$SSN_ROOT/logs}

ssn_die() { echo "error: $*" >&2; exit 2; }

ssn_is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ssn_parse_args "$@": takes the script's own options out; the rest lands in SSN_ARGS.
ssn_parse_args() {
    SSN_ARGS=()
    SSN_EXTRA_SBATCH=()
    SSN_DRY_RUN=${SSN_DRY_RUN:-0}
    while [ $# -gt 0 ]; do
        case "$1" in
            --max-parallel) [ $# -ge 2 ] || ssn_die "--max-parallel needs a number"; SSN_MAX_PARALLEL=$2; shift 2 ;;
            --max-parallel=*) SSN_MAX_PARALLEL=${1#*=}; shift ;;
            --signal-lead) [ $# -ge 2 ] || ssn_die "--signal-lead needs seconds"; SSN_SIGNAL_LEAD=$2; shift 2 ;;
            --signal-lead=*) SSN_SIGNAL_LEAD=${1#*=}; shift ;;
            --no-slurm) SSN_NO_SLURM=1; shift ;;
            --dry-run) SSN_DRY_RUN=1; shift ;;
            --sbatch) shift; SSN_EXTRA_SBATCH=("$@"); break ;;
            *) SSN_ARGS+=("$1"); shift ;;
        esac
    done
    if [ -n "${SSN_MAX_PARALLEL:-}" ]; then
        ssn_is_uint "$SSN_MAX_PARALLEL" && [ "$SSN_MAX_PARALLEL" -ge 1 ] \
            || ssn_die "--max-parallel / SSN_MAX_PARALLEL must be an integer >= 1, got '$SSN_MAX_PARALLEL'"
    fi
    SSN_SIGNAL_LEAD=${SSN_SIGNAL_LEAD:-120}
    ssn_is_uint "$SSN_SIGNAL_LEAD" || ssn_die "--signal-lead / SSN_SIGNAL_LEAD must be seconds (an integer), got '$SSN_SIGNAL_LEAD'"
    ssn_is_uint "${SSN_GPUS:-0}" || ssn_die "SSN_GPUS must be an integer >= 0, got '$SSN_GPUS'"
    if [ -n "${SSN_CPUS:-}" ]; then
        ssn_is_uint "$SSN_CPUS" && [ "$SSN_CPUS" -ge 1 ] || ssn_die "SSN_CPUS must be an integer >= 1, got '$SSN_CPUS'"
    fi
}

# ssn_use_slurm: 0 when the work is submitted with sbatch, 1 when it runs plainly here (says why).
ssn_use_slurm() {
    if [ "${SSN_NO_SLURM:-0}" = 1 ]; then
        echo "SSN_NO_SLURM=1: running plainly in this shell, one unit after the other" >&2; return 1
    fi
    if [ "$SSN_DRY_RUN" = 1 ]; then
        return 0
    fi
    if ! command -v sbatch >/dev/null 2>&1; then
        echo "no sbatch on PATH: running plainly in this shell, one unit after the other" >&2; return 1
    fi
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "inside Slurm job $SLURM_JOB_ID: running plainly in this allocation, one unit after the other" >&2; return 1
    fi
    return 0
}

# ssn_setup_env: prepares .venv once, in the submitting shell (never in a task).
ssn_setup_env() {
    if [ -n "${SSN_PYTHON:-}" ] || [ "${SSN_SKIP_SETUP:-0}" = 1 ]; then
        [ -x "$SSN_PY" ] || command -v "$SSN_PY" >/dev/null || ssn_die "python interpreter $SSN_PY not found"
        return 0
    fi
    bash "$SSN_ROOT/scripts/setup_env.sh"
}

# ssn_resources DEFAULT_CPUS DEFAULT_MEM DEFAULT_TIME: the task resources in SSN_RES, then the user's flags
# (SSN_SBATCH_ARGS, --sbatch ...) in SSN_USER_SBATCH. A GPU only when SSN_GPUS > 0.
ssn_resources() {
    SSN_RES=(--cpus-per-task="${SSN_CPUS:-$1}")
    local mem=${SSN_MEM-$2} time=${SSN_TIME-$3} gpus=${SSN_GPUS:-0}
    [ -n "$mem" ] && SSN_RES+=(--mem="$mem")
    [ -n "$time" ] && SSN_RES+=(--time="$time")
    [ "$gpus" -gt 0 ] && SSN_RES+=(--gres="gpu:$gpus")
    SSN_USER_SBATCH=()
    [ -n "${SSN_PARTITION:-}" ] && SSN_USER_SBATCH+=(--partition="$SSN_PARTITION")
    local extra=()
    read -r -a extra <<< "${SSN_SBATCH_ARGS:-}"
    SSN_USER_SBATCH+=(${extra[@]+"${extra[@]}"} ${SSN_EXTRA_SBATCH[@]+"${SSN_EXTRA_SBATCH[@]}"})
}

# ssn_sbatch ARGS...: sbatch --parsable ARGS; prints the job id (or, with --dry-run, the command it
# would run, and a placeholder for the id it would get: nothing is submitted).
ssn_sbatch() {
    if [ "$SSN_DRY_RUN" = 1 ]; then
        printf 'dry-run: sbatch --parsable' >&2; printf ' %q' "$@" >&2; echo >&2
        echo "<job-id>"; return 0
    fi
    local out
    out=$(sbatch --parsable "$@") || ssn_die "sbatch failed (see its message above); nothing more was submitted"
    echo "${out%%;*}"
}

# ssn_forward_run CMD...: runs CMD in the background and waits for it; USR1 and TERM reaching this shell
# are passed on to it (INT as TERM: a background child of a script ignores INT). Exit status in SSN_RC.
ssn_forward_run() {
    local child signalled=0
    "$@" &
    child=$!
    trap 'signalled=1; kill -USR1 "$child" 2>/dev/null' USR1
    trap 'signalled=1; kill -TERM "$child" 2>/dev/null' TERM INT
    while :; do
        signalled=0
        wait "$child"
        SSN_RC=$?
        [ "$signalled" = 1 ] || break
        # wait was cut short by a signal: wait again for the child's own status
        if ! kill -0 "$child" 2>/dev/null; then
            local again
            wait "$child" 2>/dev/null; again=$?
            [ "$again" != 127 ] && SSN_RC=$again
            break
        fi
    done
    trap - USR1 TERM INT
}

# ssn_batch KIND "$@": what run_slurm_train.sh and run_slurm_eval.sh do (KIND = train or eval).
ssn_batch() {
    local kind=$1; shift
    ssn_parse_args "$@"
    cd "$SSN_ROOT" || ssn_die "cannot enter $SSN_ROOT"
    local slurm=1
    ssn_use_slurm || slurm=0
    ssn_setup_env
    # the manifest: lists the units (checks the datasets are there, generates the demo) before anything is submitted
    local built folder="" pending="" count=0 name="" indices=""
    local build=(build)
    [ "$SSN_DRY_RUN" = 1 ] && build+=(--dry-run)   # lists the units, writes no manifest
    built=$("$SSN_PY" slurm/manifest.py "${build[@]}" "$kind" ${SSN_ARGS[@]+"${SSN_ARGS[@]}"}) || exit $?
    while IFS='=' read -r key value; do
        case "$key" in
            folder) folder=$value ;; pending) pending=$value ;; count) count=$value ;;
            name) name=$value ;; indices) indices=$value ;;
        esac
    done <<< "$built"
    [ -n "$folder" ] || ssn_die "no manifest was written"
    if [ "$SSN_DRY_RUN" = 1 ]; then
        echo "Manifest (dry run, not written): $folder/manifest.json"
    else
        echo "Manifest: $folder/manifest.json"
    fi

    if [ "$SSN_DRY_RUN" = 1 ] && { [ "$slurm" = 0 ] || [ "$count" = 0 ]; }; then
        echo "dry run: nothing was written and nothing was run ($count unit(s) to run$([ "$slurm" = 0 ] && echo ' here, one after the other'))"
        return 0
    fi
    if [ "$slurm" = 0 ]; then
        local index stopped=0
        for index in $indices; do
            SSN_TASK_ID=$index ssn_forward_run bash "$SSN_ROOT/slurm/task.sh" "$folder"
            if [ "$SSN_RC" = 3 ] || [ "$SSN_RC" -ge 128 ]; then
                echo "stopped (exit $SSN_RC); run the same command again to continue" >&2; stopped=1; break
            fi
        done
        "$SSN_PY" slurm/aggregate.py "$folder"
        local rc=$?
        [ "$stopped" = 1 ] && return 3
        return $rc
    fi

    if [ "$count" = 0 ]; then
        echo "Every unit is complete: aggregating now"
        "$SSN_PY" slurm/aggregate.py "$folder"
        return $?
    fi
    local default_time=2-00:00:00
    [ "$kind" = eval ] && default_time=08:00:00
    ssn_resources 8 32G "$default_time"
    [ "$SSN_DRY_RUN" = 1 ] || mkdir -p "$SSN_LOG_DIR"
    local job="ssn-$name" spec=$pending array_id agg_id
    job=${job//_/-}
    [ -n "${SSN_MAX_PARALLEL:-}" ] && spec="$spec%$SSN_MAX_PARALLEL"
    array_id=$(ssn_sbatch --job-name="$job" --array="$spec" --chdir="$SSN_ROOT" \
        --output="$SSN_LOG_DIR/%x-%A_%a.out" --open-mode=append --requeue --signal="B:USR1@$SSN_SIGNAL_LEAD" \
        "${SSN_RES[@]}" ${SSN_USER_SBATCH[@]+"${SSN_USER_SBATCH[@]}"} \
        "$SSN_ROOT/slurm/task.sh" "$folder") || exit $?
    local log_pattern="$SSN_LOG_DIR/$job-${array_id}_%a.out"
    agg_id=$(ssn_sbatch --job-name="$job-aggregate" --dependency="afterany:$array_id" --kill-on-invalid-dep=yes \
        --chdir="$SSN_ROOT" --output="$SSN_LOG_DIR/%x-%j.out" --open-mode=append \
        --cpus-per-task=1 --mem="${SSN_AGGREGATE_MEM:-2G}" --time="${SSN_AGGREGATE_TIME:-00:30:00}" \
        ${SSN_USER_SBATCH[@]+"${SSN_USER_SBATCH[@]}"} \
        "$SSN_ROOT/slurm/aggregate.sh" "$folder" "$log_pattern") || {
        echo "the aggregation could not be submitted: cancelling array job $array_id" >&2
        [ "$SSN_DRY_RUN" = 1 ] || scancel "$array_id"
        exit 2
    }
    if [ "$SSN_DRY_RUN" = 1 ]; then
        echo "dry run: nothing was written and nothing was submitted (the $count task(s) and the aggregation above)"
        return 0
    fi
    printf 'array %s\naggregate %s\n' "$array_id" "$agg_id" >> "$folder/jobs"
    echo "Submitted array job $array_id ($count task(s)${SSN_MAX_PARALLEL:+, at most $SSN_MAX_PARALLEL at once}) and aggregation job $agg_id (after it)"
    echo "Logs: $SSN_LOG_DIR/$job-${array_id}_<task>.out, $SSN_LOG_DIR/$job-aggregate-$agg_id.out"
    echo "submitted array=$array_id aggregate=$agg_id manifest=$folder"
}
