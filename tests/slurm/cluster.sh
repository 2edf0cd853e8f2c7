#!/usr/bin/env bash
# Private single-node Slurm cluster on 127.0.0.1 for the test suite (tests/slurm/conftest.py).
#
#   bash tests/slurm/cluster.sh up       # install (if missing), configure, start, wait until the node is idle
#   bash tests/slurm/cluster.sh status   # exit 0 when up; prints daemons and sinfo
#   bash tests/slurm/cluster.sh env      # prints `export SLURM_CONF=...` for using the cluster by hand
#   bash tests/slurm/cluster.sh down     # cancel jobs, stop ONLY the daemons that `up` started
#
# What `up` does (root only; Debian/Ubuntu; no systemd needed):
#   1. installs slurmctld slurmd slurm-client munge with apt-get (update first, non-interactive) when
#      any of their programs is missing; a temporary /usr/sbin/policy-rc.d keeps the packages' init
#      scripts from starting daemons with the system configuration.
#   2. writes its own slurm.conf and cgroup.conf into $SSN_SLURM_DIR/etc (nothing under /etc is
#      touched): one node named after this host at 127.0.0.1 with the real CPU topology (`slurmd -C`)
#      and 90 % of the available memory, no GRES; partition `debug` (default); select/cons_tres
#      (CR_CPU_Memory, DefMemPerCPU = memory/CPUs so jobs without --mem do not take the whole node),
#      proctrack/linuxproc, task/none (no cgroups); JobRequeue=1, MaxArraySize=1001, KillWait=2;
#      AuthInfo cred_expire=10 (a requeued job may start again after 11 s instead of 121 s) and
#      sched_interval/bf_interval=3 (it then starts within seconds); MinJobAge=600 keeps finished
#      jobs in `scontrol show job`; no accounting (sacct does not work).
#      Ports 16817 (slurmctld) and 16818 (slurmd), so a system Slurm on 6817/6818 is not disturbed.
#   3. starts munged (private key and socket), slurmctld and slurmd with PID files in the state
#      directory, records each daemon it started in $SSN_SLURM_DIR/started, and waits (60 s) until
#      `sinfo` shows the node idle. Every fresh start wipes the previous job state (empty queue,
#      job ids from 1).
#   `up` when already up only checks and exits 0. On failure it stops what it had started and exits
#   non-zero with one line "cluster.sh: ..." on stderr (the pytest fixture turns it into a skip);
#   details in $SSN_SLURM_DIR/log.
#   Client commands need SLURM_CONF=$SSN_SLURM_DIR/etc/slurm.conf in their environment (the fixture
#   sets it).
#
# Environment: SSN_SLURM_DIR   state directory (default /tmp/ssn-slurm)
#              SSN_SLURM_PORT  slurmctld port (default 16817); slurmd uses the next one
#              SSN_SLURM_MEM_MB  node RealMemory in MB (default 90 % of MemAvailable)
set -uo pipefail

DIR=${SSN_SLURM_DIR:-/tmp/ssn-slurm}
CTLD_PORT=${SSN_SLURM_PORT:-16817}
D_PORT=$((CTLD_PORT + 1))
ETC=$DIR/etc
CONF=$ETC/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
MUNGE_SOCKET=$RUN/munge.socket
STARTED=$DIR/started
NODE=$(hostname -s)
export SLURM_CONF=$CONF
t0=$(date +%s%3N)

say() { local ms=$(( $(date +%s%3N) - t0 )); printf '[cluster.sh %d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
CLEANUP_ON_DIE=0
die() {
    # a failed `up` stops what it started already, so nothing is left running
    [ $CLEANUP_ON_DIE = 1 ] && { CLEANUP_ON_DIE=0; cmd_down >>"$LOG/down.log" 2>&1; }
    echo "cluster.sh: $*" >&2; exit 1
}

# live_pid <name>: the PID from $RUN/<name>.pid when that process is still running binary <name>
live_pid() {
    local pid exe
    [ -s "$RUN/$1.pid" ] || return 1
    pid=$(cat "$RUN/$1.pid" 2>/dev/null); [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 1
    exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null || true)
    case "$(basename "$exe")" in "$1" | "$1"-wlm) echo "$pid" ;; *) return 1 ;; esac   # Debian: slurmctld-wlm
}
# started_by_us <name> <pid>: whether `up` recorded that it started this daemon with this PID
started_by_us() { grep -qx "$1 $2" "$STARTED" 2>/dev/null; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_up() {
    local d pid
    for d in munged slurmctld slurmd; do
        pid=$(live_pid $d) && started_by_us $d "$pid" || return 1
    done
    [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]
}

stop_ours() { # names...: TERM (then KILL) each daemon only if `up` started it and it is still that process
    local name pid pids=() names=() i
    for name in "$@"; do
        if pid=$(live_pid "$name") && started_by_us "$name" "$pid"; then
            kill -TERM "$pid" 2>/dev/null; pids+=("$pid"); names+=("$name")
        elif pid=$(live_pid "$name"); then
            say "left $name (pid $pid) running: not started by this script"
            continue
        fi
        rm -f "$RUN/$name.pid"
        sed -i "/^$name /d" "$STARTED" 2>/dev/null
    done
    for i in "${!pids[@]}"; do
        for _ in $(seq 1 100); do [ -d "/proc/${pids[$i]}" ] || break; sleep 0.05; done
        if [ -d "/proc/${pids[$i]}" ]; then kill -KILL "${pids[$i]}" 2>/dev/null; sleep 0.2; say "${names[$i]} (pid ${pids[$i]}) needed SIGKILL"; fi
        say "stopped ${names[$i]} (pid ${pids[$i]})"
    done
    return 0
}

cmd_down() {
    local pid jobs
    if pid=$(live_pid slurmctld) && started_by_us slurmctld "$pid"; then
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// }" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null
            for _ in $(seq 1 40); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
        fi
    fi
    stop_ours slurmd slurmctld munged   # together: one after the other took ~2 s each
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # job steps whose slurmd went away: slurmstepd processes using our spool directory
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null); do
        if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF "$DIR/" \
                || readlink "/proc/$p/cwd" 2>/dev/null | grep -q "^$DIR/"; then
            kill -KILL "$p" 2>/dev/null && say "killed leftover slurmstepd $p"
        fi
    done
    say "down (state kept in $DIR)"
}

cmd_status() {
    local d pid rc=0
    for d in munged slurmctld slurmd; do
        if pid=$(live_pid $d); then
            started_by_us $d "$pid" && echo "$d: running (pid $pid, started by cluster.sh)" \
                || echo "$d: running (pid $pid, NOT recorded as started by cluster.sh)"
        else
            echo "$d: not running"; rc=3
        fi
    done
    [ $rc = 0 ] && { timeout 10 sinfo || rc=3; }
    [ $rc = 0 ] && [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]] || rc=3
    echo "SLURM_CONF=$CONF"
    return $rc
}

install_packages() {
    local need=() b policy_added=0
    for b in munged munge mungekey slurmctld slurmd sbatch sinfo scontrol; do command -v "$b" >/dev/null || need+=("$b"); done
    [ ${#need[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die "cannot install Slurm: ${need[*]} missing and no apt-get on this machine"
    say "installing slurmctld slurmd slurm-client munge (missing: ${need[*]})"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local ok=1
    timeout 300 apt-get update -q >"$LOG/apt.log" 2>&1 || ok=0
    if [ $ok = 1 ]; then
        timeout 600 apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
            slurmctld slurmd slurm-client munge >>"$LOG/apt.log" 2>&1 || ok=0
    fi
    [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $ok = 1 ] || die "cannot install Slurm: apt-get update/install failed (no package access?); see $LOG/apt.log: $(grep -E '^(E|W):' "$LOG/apt.log" | head -n1)"
    for b in munged slurmctld slurmd sbatch; do command -v "$b" >/dev/null || die "cannot install Slurm: $b still missing after apt-get install"; done
    say "packages installed ($(slurmctld -V 2>/dev/null))"
}

write_config() {
    local hw f cpus boards spb cps tpc hw_mem avail_mb mem comm
    hw=$(slurmd -C 2>/dev/null | head -n1)
    f() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    cpus=$(f CPUs); boards=$(f Boards); spb=$(f SocketsPerBoard); cps=$(f CoresPerSocket); tpc=$(f ThreadsPerCore)
    hw_mem=$(f RealMemory)
    [[ $cpus =~ ^[0-9]+$ && $hw_mem =~ ^[0-9]+$ ]] || die "cannot read the hardware from 'slurmd -C' (got: $hw)"
    avail_mb=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
    mem=${SSN_SLURM_MEM_MB:-$(( avail_mb * 9 / 10 ))}
    [ "$mem" -le "$hw_mem" ] || mem=$hw_mem
    # slurmctld binds only its SlurmctldHost address (NoCtldInAddrAny); slurmd and srun bind the
    # address the host name resolves to (NoInAddrAny), which is loopback only where it resolves so
    comm=NoCtldInAddrAny
    case "$(getent ahostsv4 "$NODE" 2>/dev/null | awk 'NR == 1 {print $1}')" in 127.*) comm=$comm,NoInAddrAny ;; esac
    cat > "$CONF.tmp" <<EOF
# written by tests/slurm/cluster.sh: private single-node cluster, state in $DIR
ClusterName=ssn-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CommunicationParameters=$comm
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (containers, CI): processes tracked through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem / cpus ))
SchedulerType=sched/backfill
# run the schedulers every few seconds (defaults 60 s and 30 s): requeued jobs restart promptly
SchedulerParameters=sched_interval=3,bf_interval=3
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MaxArraySize=1001
MaxJobCount=100000
KillWait=2
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus Boards=$boards SocketsPerBoard=$spb CoresPerSocket=$cps ThreadsPerCore=$tpc RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    cat > "$ETC/cgroup.conf" <<EOF
# written by tests/slurm/cluster.sh: no cgroup plugin is configured (proctrack/linuxproc, task/none)
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
    say "wrote $CONF (node $NODE: CPUs=$cpus RealMemory=${mem}M, ports $CTLD_PORT/$D_PORT)"
}

cmd_up() {
    [ "$(id -u)" = 0 ] || die "must run as root to install and run Slurm daemons (uid $(id -u))"
    mkdir -p "$DIR" "$LOG" || die "cannot create $DIR"
    install_packages
    if is_up; then say "already up: node $NODE is $(node_state)"; return 0; fi
    # partly up or stale: stop what we started, then start clean
    cmd_down >/dev/null
    local d
    for d in munged slurmctld slurmd; do
        live_pid $d >/dev/null && die "a $d not started by cluster.sh uses $RUN/$d.pid; stop it or choose another SSN_SLURM_DIR"
    done
    port_busy "$CTLD_PORT" && die "port $CTLD_PORT is in use by another program; set SSN_SLURM_PORT"
    port_busy "$D_PORT" && die "port $D_PORT is in use by another program; set SSN_SLURM_PORT"
    rm -rf "$DIR/ctld" "$DIR/spool"
    mkdir -p "$ETC" "$RUN" "$DIR/ctld" "$DIR/spool" "$DIR/munge"
    chmod 755 "$DIR" "$RUN"        # munged wants a socket directory that others can traverse
    chmod 700 "$DIR/munge"
    : >> "$STARTED"
    CLEANUP_ON_DIE=1
    write_config

    # munged: private key, socket, PID file
    if [ ! -s "$DIR/munge/munge.key" ]; then
        if command -v mungekey >/dev/null; then mungekey --create --keyfile="$DIR/munge/munge.key" \
            || die "mungekey failed"
        else dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; fi
    fi
    chown root:root "$DIR/munge/munge.key"; chmod 600 "$DIR/munge/munge.key"
    /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munged.seed" >>"$LOG/munged.log" 2>&1 \
        || die "munged failed to start; see $LOG/munged.log"
    local pid
    pid=$(live_pid munged) || die "munged did not write $RUN/munged.pid; see $LOG/munged.log"
    echo "munged $pid" >> "$STARTED"
    munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
        || die "munge credential round trip failed; see $LOG/munged.log"

    # slurmctld (daemonizes; PID file from slurm.conf)
    /usr/sbin/slurmctld -f "$CONF" >>"$LOG/slurmctld.start.log" 2>&1 || die "slurmctld failed to start; see $LOG/slurmctld.log"
    for _ in $(seq 1 50); do pid=$(live_pid slurmctld) && break; sleep 0.1; done
    pid=$(live_pid slurmctld) || die "slurmctld did not start; see $LOG/slurmctld.log"
    echo "slurmctld $pid" >> "$STARTED"
    for _ in $(seq 1 100); do timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
    timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer after 20 s; see $LOG/slurmctld.log"

    /usr/sbin/slurmd -f "$CONF" -N "$NODE" >>"$LOG/slurmd.start.log" 2>&1 || die "slurmd failed to start; see $LOG/slurmd.log"
    for _ in $(seq 1 50); do pid=$(live_pid slurmd) && break; sleep 0.1; done
    pid=$(live_pid slurmd) || die "slurmd did not start; see $LOG/slurmd.log"
    echo "slurmd $pid" >> "$STARTED"

    local st="" i
    for i in $(seq 1 300); do
        st=$(node_state)
        case "$st" in
            idle|mix|alloc|comp) break ;;
            down*|drain*|drng*) [ $((i % 10)) = 0 ] && timeout 5 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 ;;
        esac
        sleep 0.2
    done
    case "$st" in idle|mix|alloc|comp) ;;
        *) die "node $NODE is '${st:-unknown}' (not idle) after 60 s; see $LOG/slurmd.log and $LOG/slurmctld.log" ;; esac
    CLEANUP_ON_DIE=0
    say "up: node $NODE is $st (munged $(live_pid munged), slurmctld $(live_pid slurmctld), slurmd $(live_pid slurmd)); SLURM_CONF=$CONF"
}

case "${1:-}" in
    up) cmd_up ;;
    down) [ "$(id -u)" = 0 ] || die "must run as root"; cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
