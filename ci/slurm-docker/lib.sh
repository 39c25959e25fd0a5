# shellcheck shell=bash
# Shared by start.sh and stop.sh: where the state lives, PID records, the /etc/hosts line, and
# stopping exactly the daemons start.sh started.
#
# A PID record is "$PIDS/<name>" holding "PID STARTTIME" (field 22 of /proc/PID/stat), so a PID
# reused by an unrelated process after a reboot or a crash is never signalled.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${MPIENGINE_SLURM_DIR:-$REPO/.state/slurm}
PIDS=$STATE/pids
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
HOSTS_FILE=${MPIENGINE_HOSTS_FILE:-/etc/hosts}
HOSTS_MARK="# mpiengine-slurm-ci"

log() { printf 'slurm-ci: %s\n' "$*"; }
err() { printf 'slurm-ci: %s\n' "$*" >&2; }

# Start time of PID in clock ticks since boot; fails when the process is gone.
proc_starttime() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    printf '%s\n' "${20}"
}

# True while PID runs as the very process recorded. A zombie counts as gone: PID 1 here reaps
# slowly, so `kill -0` would report a dead daemon as alive.
proc_matches() {
    local pid=$1 start=$2 state now
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
    case $state in "" | Z | X) return 1 ;; esac
    now=$(proc_starttime "$pid") || return 1
    [ "$now" = "$start" ]
}

record_pid() {
    local name=$1 pid=$2 start
    start=$(proc_starttime "$pid") || start=gone
    mkdir -p "$PIDS"
    printf '%s %s\n' "$pid" "$start" >"$PIDS/$name"
}

# True when the daemon recorded under NAME still runs.
recorded_alive() {
    local pid start
    [ -f "$PIDS/$1" ] || return 1
    read -r pid start <"$PIDS/$1" || return 1
    proc_matches "$pid" "$start"
}

recorded_names() {
    [ -d "$PIDS" ] || return 0
    find "$PIDS" -maxdepth 1 -type f -printf '%f\n' | sort
}

# Send SIG to every still-running recorded daemon among NAMES.
signal_recorded() {
    local sig=$1 name pid start
    shift
    for name in "$@"; do
        recorded_alive "$name" || continue
        read -r pid start <"$PIDS/$name"
        kill "-$sig" "$pid" 2>/dev/null || true
    done
}

# Wait up to SECONDS for every daemon among NAMES to end; fails if one still runs.
wait_recorded_gone() {
    local seconds=$1 deadline name left
    shift
    deadline=$((SECONDS + seconds))
    while :; do
        left=0
        for name in "$@"; do
            if recorded_alive "$name"; then left=1; fi
        done
        [ "$left" = 0 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

# SIGTERM, a bounded wait, then SIGKILL for the daemons among NAMES.
stop_recorded() {
    local grace=${SLURM_STOP_GRACE:-10}
    [ $# -gt 0 ] || return 0
    signal_recorded TERM "$@"
    if ! wait_recorded_gone "$grace" "$@"; then
        err "still running after ${grace}s, sending SIGKILL: $*"
        signal_recorded KILL "$@"
        wait_recorded_gone 5 "$@" || err "could not end: $*"
    fi
}

# Cancel every job of this cluster so that no slurmstepd outlives its slurmd.
cancel_jobs() {
    local ids deadline
    recorded_alive slurmctld || return 0
    ids=$(SLURM_CONF=$CONF timeout 5 squeue -h -o %A 2>/dev/null) || return 0
    [ -n "$ids" ] || return 0
    log "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    SLURM_CONF=$CONF timeout 5 scancel $ids 2>/dev/null || true
    deadline=$((SECONDS + ${SLURM_CANCEL_WAIT:-15}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        ids=$(SLURM_CONF=$CONF timeout 5 squeue -h -o %A 2>/dev/null) || return 0
        [ -n "$ids" ] || return 0
        sleep 0.2
    done
    err "jobs still listed after cancel: $(echo "$ids" | tr '\n' ' ')"
}

# PIDs of slurmstepd processes that belong to this cluster: each one listens on a unix socket
# in its node's SlurmdSpoolDir under this state dir (its environment and argv are overwritten
# by the process title, so they cannot tell clusters apart).
cluster_stepds() {
    local inodes dir fd link
    inodes=$(awk -v dir="$STATE/spool/" 'index($8, dir) == 1 {print "socket:[" $7 "]"}' \
        /proc/net/unix 2>/dev/null)
    [ -n "$inodes" ] || return 0
    for dir in /proc/[0-9]*; do
        case $(readlink "$dir/exe" 2>/dev/null) in /usr/sbin/slurmstepd*) ;; *) continue ;; esac
        for fd in "$dir"/fd/*; do
            link=$(readlink "$fd" 2>/dev/null) || continue
            if grep -qxF "$link" <<<"$inodes"; then
                printf '%s\n' "${dir#/proc/}"
                break
            fi
        done
    done | sort -u
}

# PIDs of the given processes and all their descendants (from /proc/PID/stat parent links).
with_descendants() {
    local dir stat rest
    {
        for dir in /proc/[0-9]*; do
            stat=$(cat "$dir/stat" 2>/dev/null) || continue
            rest=${stat##*) }
            # shellcheck disable=SC2086
            set -- $rest
            printf '%s %s\n' "${dir#/proc/}" "$2"
        done
    } | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                grew = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
            } while (grew)
            for (p in keep) print p
        }'
}

# Fallback when jobs could not be cancelled (slurmctld gone): end this cluster's slurmstepd
# processes and the job tasks under them, which a stopped slurmd would otherwise leave running.
kill_stepds() {
    local stepds pids pid
    stepds=$(cluster_stepds)
    [ -n "$stepds" ] || return 0
    # shellcheck disable=SC2086
    pids=$(with_descendants $stepds)
    err "ending leftover slurmstepd and their tasks: $(echo "$pids" | sort -n | tr '\n' ' ')"
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
}

hosts_line() {
    local names=() k
    for k in $(seq 1 "$1"); do names+=("node$k"); done
    printf '127.0.0.1 %s %s\n' "${names[*]}" "$HOSTS_MARK"
}

# Rewrite the hosts file in place (cat >), not by rename: in containers /etc/hosts is often a
# bind mount that cannot be replaced.
remove_hosts_line() {
    local kept
    [ -f "$HOSTS_FILE" ] || return 0
    grep -qF "$HOSTS_MARK" "$HOSTS_FILE" || return 0
    kept=$(grep -vF "$HOSTS_MARK" "$HOSTS_FILE" || true)
    printf '%s\n' "$kept" >"$HOSTS_FILE"
}

ensure_hosts_line() {
    local line=$1
    grep -qxF "$line" "$HOSTS_FILE" 2>/dev/null && return 0
    remove_hosts_line
    printf '%s\n' "$line" >>"$HOSTS_FILE"
}

# Stop everything a previous start recorded, in dependency order, and clear the records.
stop_cluster() {
    local slurmds=() name
    while read -r name; do
        case $name in slurmd.*) slurmds+=("$name") ;; esac
    done < <(recorded_names)
    cancel_jobs
    stop_recorded "${slurmds[@]}"
    kill_stepds
    stop_recorded slurmctld
    stop_recorded munged
    rm -rf "$PIDS" "$STATE/run"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MUNGE_DIR/munged.pid"
    remove_hosts_line
}
