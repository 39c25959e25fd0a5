#!/usr/bin/env bash
# Bring up a real multi-node Slurm cluster on this one Debian host (no Docker engine, no systemd):
# munged, slurmctld and one `slurmd -N nodeK` per node, each slurmd in its own UTS namespace
# with hostname nodeK. Idempotent: an already healthy cluster is left as it is.
#
# Env: SLURM_NODES (4 CPU nodes), SLURM_CPUS (2), SLURM_GPU_NODES (1 more node, partition gpu),
#      SLURM_GPU_CPUS (4), SLURM_GPUS (4 fake GPUs per GPU node), MPIENGINE_SLURM_DIR (<repo>/.state/slurm),
#      SLURM_START_TIMEOUT (60 s), SLURM_CTLD_PORT (6817), SLURMD_PORT_BASE (17001).
# Then: source <state>/env.sh   (export SLURM_CONF=<state>/slurm.conf)
set -euo pipefail
umask 022

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

NODES=${SLURM_NODES:-4}
CPUS=${SLURM_CPUS:-2}
GPU_NODES=${SLURM_GPU_NODES:-1}
GPU_CPUS=${SLURM_GPU_CPUS:-4}
GPUS=${SLURM_GPUS:-4}
ALL_NODES=$((NODES + GPU_NODES))
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}
SLURM_PACKAGES=(slurmctld slurmd slurm-client munge)
MPI_PACKAGES=(mpich libmpich-dev openmpi-bin libopenmpi-dev libpmix2 libpmix-dev)
T0=${EPOCHREALTIME/./}

# Seconds since this script started, one decimal.
elapsed() {
    local us=$((${EPOCHREALTIME/./} - T0))
    printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10))
}

# apt-get only for what is missing; libpmix2 must be there before slurmd starts (--mpi=pmix).
ensure_packages() {
    local missing=() pkg
    for pkg in "${SLURM_PACKAGES[@]}" "${MPI_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" \
        >"$STATE/apt.log" 2>&1 || { tail -n 30 "$STATE/apt.log" >&2; return 1; }
    log "installed in $(elapsed) s"
}

# Node states as "name state" lines, or nothing when slurmctld does not answer.
node_states() {
    SLURM_CONF=$CONF timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true
}

# True when all ALL_NODES nodes are listed and each is in one of the states given (regex).
nodes_in() {
    local pattern=$1 states
    states=$(node_states)
    [ "$(printf '%s\n' "$states" | grep -cE "^node[0-9]+ ($pattern)\$")" -eq "$ALL_NODES" ]
}

daemons_alive() {
    local name
    for name in munged slurmctld $(seq -f 'slurmd.node%g' 1 "$ALL_NODES"); do
        recorded_alive "$name" || return 1
    done
}

write_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF" >"$STATE/env.sh"
}

report_ready() {
    write_env
    log "cluster ready: $NODES nodes x $CPUS CPUs (partition ${SLURM_PARTITION:-debug}), $GPU_NODES x $GPU_CPUS CPUs x $GPUS GPUs (partition gpu)"
    log "point clients at it with:"
    printf '    export SLURM_CONF=%s\n    # or: source %s/env.sh\n' "$CONF" "$STATE"
}

fail_with_logs() {
    local f
    err "$1"
    for f in "$STATE"/log/*; do
        [ -s "$f" ] || continue
        printf '\n==> %s <==\n' "$f" >&2
        tail -n 15 "$f" >&2
    done
    printf '\nnode states:\n%s\n' "$(node_states)" >&2
    err "stopping what was started"
    stop_cluster
    exit 1
}

# Wait up to SECONDS for a command to succeed; give up at once when a started daemon exited.
wait_for() {
    local deadline=$((${EPOCHREALTIME/./} + $1 * 1000000)) name
    shift
    until "$@"; do
        for name in $(recorded_names); do
            recorded_alive "$name" || { err "$name exited"; return 1; }
        done
        [ "${EPOCHREALTIME/./}" -gt "$deadline" ] && return 1
        sleep 0.1
    done
}

# Run a daemon in the foreground in its own session, detached from the caller's terminal and
# process group (a CI job killing its group must not take the cluster down mid-run), and record
# its PID. setsid, setpriv and unshare (without --fork) all exec, so $! is the daemon itself.
# fd 9 (the start/stop lock) is closed in it, or the daemon would hold the lock forever.
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 9>&- &
    record_pid "$name" $!
}

prepare_dirs() {
    local k
    rm -rf "$STATE/ctld" "$STATE/spool" "$STATE/tmp" "$STATE/run" "$STATE/log" "$PIDS"
    mkdir -p "$STATE/ctld" "$STATE/run" "$STATE/log" "$PIDS" "$MUNGE_DIR"
    for k in $(seq 1 "$ALL_NODES"); do
        mkdir -p "$STATE/spool/slurmd.node$k" "$STATE/tmp/node$k"
    done
    # munged checks ownership and modes of its key, socket and log directory.
    chown munge:munge "$MUNGE_DIR"
    chmod 0755 "$MUNGE_DIR"
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        log "creating munge key"
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    make_fake_gpus
}

# GRES device files must be character devices (slurmd stats them); nothing ever opens them.
# Major 195 is NVIDIA's; minors 0..GPUS-1 as on a real node.
make_fake_gpus() {
    local g
    rm -rf "$STATE/dev"
    mkdir -p "$STATE/dev"
    for ((g = 0; g < GPUS; g++)); do
        mknod -m 0666 "$STATE/dev/gpu$g" c 195 "$g"
    done
}

munge_works() {
    munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

start_munged() {
    if [ ${#MUNGE_SOCKET} -gt 100 ]; then
        err "munge socket path too long for a unix socket (${#MUNGE_SOCKET} chars): $MUNGE_SOCKET"
        err "set MPIENGINE_SLURM_DIR to a shorter path"
        exit 1
    fi
    launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
        --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed"
    wait_for 10 munge_works || fail_with_logs "munged did not answer on $MUNGE_SOCKET"
}

ctld_up() {
    SLURM_CONF=$CONF timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'
}

start_slurm() {
    local k
    export SLURM_CONF=$CONF
    launch slurmctld /usr/sbin/slurmctld -D
    wait_for 20 ctld_up || fail_with_logs "slurmctld did not answer scontrol ping"
    for k in $(seq 1 "$ALL_NODES"); do
        # Own UTS namespace: `hostname` inside a task prints the Slurm node name.
        # shellcheck disable=SC2016
        launch "slurmd.node$k" unshare --uts sh -c 'hostname "$1" && exec /usr/sbin/slurmd -D -N "$1"' \
            sh "node$k"
    done
}

main() {
    [ "$(id -u)" = 0 ] || { err "must run as root (apt-get, munge user, unshare --uts)"; exit 1; }
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || { err "another start/stop holds $STATE/.lock"; exit 1; }

    ensure_packages
    local gen=("$HERE/gen-slurm-conf.sh" --mode host --nodes "$NODES" --cpus "$CPUS"
        --gpu-nodes "$GPU_NODES" --gpu-cpus "$GPU_CPUS" --gpus "$GPUS" --state "$STATE")
    "${gen[@]}" >"$STATE/slurm.conf.new"
    "${gen[@]}" --gres-conf >"$STATE/gres.conf.new"

    if daemons_alive && cmp -s "$CONF" "$STATE/slurm.conf.new" &&
        cmp -s "$STATE/gres.conf" "$STATE/gres.conf.new" &&
        nodes_in 'idle|mixed|allocated|completing'; then
        rm -f "$STATE/slurm.conf.new" "$STATE/gres.conf.new"
        ensure_hosts_line "$(hosts_line "$ALL_NODES")"
        log "already up and healthy ($(elapsed) s)"
        report_ready
        exit 0
    fi
    if [ -n "$(recorded_names)" ]; then
        log "previous cluster is unhealthy or configured differently: stopping it"
        stop_cluster
    fi

    prepare_dirs
    mv "$STATE/slurm.conf.new" "$CONF"
    # slurmd reads gres.conf from slurm.conf's directory.
    mv "$STATE/gres.conf.new" "$STATE/gres.conf"
    ensure_hosts_line "$(hosts_line "$ALL_NODES")"
    start_munged
    start_slurm
    wait_for "$START_TIMEOUT" nodes_in idle ||
        fail_with_logs "nodes not all idle within ${START_TIMEOUT}s"
    log "started in $(elapsed) s"
    report_ready
}

main "$@"
