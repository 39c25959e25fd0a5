#!/usr/bin/env bash
# Render slurm.conf.in for N nodes x C CPUs.
#
#   gen-slurm-conf.sh --mode host   --nodes 4 --cpus 4 --state DIR   (one host, start.sh)
#   gen-slurm-conf.sh --mode docker --nodes 4 --cpus 4               (docker-compose.yml)
#
# Writes to stdout. Node names are node1..nodeN and slurmd K listens on port PORT_BASE+K-1 in
# both modes, so the two layouts differ only in addresses, hostnames and paths.
# Env: SLURM_CTLD_PORT (6817), SLURMD_PORT_BASE (17001), SLURM_PARTITION (debug).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=host
nodes=${SLURM_NODES:-4}
cpus=${SLURM_CPUS:-4}
state=""
ctld_port=${SLURM_CTLD_PORT:-6817}
port_base=${SLURMD_PORT_BASE:-17001}
partition=${SLURM_PARTITION:-debug}

usage() {
    sed -n '2,10p' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --mode) mode=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        *) usage ;;
    esac
done

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_count "$nodes" || { echo "gen-slurm-conf: --nodes must be a positive integer" >&2; exit 2; }
is_count "$cpus" || { echo "gen-slurm-conf: --cpus must be a positive integer" >&2; exit 2; }

case $mode in
    host)
        [ -n "$state" ] || { echo "gen-slurm-conf: --mode host needs --state DIR" >&2; exit 2; }
        # slurmctld refuses to start unless SlurmctldHost is this machine's short hostname.
        ctld_host=$(hostname -s)
        ctld_addr=127.0.0.1
        # munged runs with its own socket under the state dir (start.sh), not /run/munge.
        auth_info="AuthInfo=socket=$state/munge/munge.socket.2"
        state_save=$state/ctld
        run_dir=$state/run
        log_dir=$state/log
        spool_dir=$state/spool
        tmp_dir=$state/tmp
        ;;
    docker)
        ctld_host=slurmctld
        ctld_addr=slurmctld
        auth_info="# AuthInfo: default munge socket (/run/munge/munge.socket.2)"
        state_save=/var/lib/slurm/ctld
        run_dir=/run/slurm
        log_dir=/var/log/slurm
        spool_dir=/var/spool/slurm
        tmp_dir=/var/tmp/slurm
        ;;
    *) usage ;;
esac

node_lines=""
for k in $(seq 1 "$nodes"); do
    if [ "$mode" = host ]; then
        # Every slurmd runs on this host (Debian builds slurmd with MULTIPLE_SLURMD).
        host=$ctld_host
        addr=127.0.0.1
    else
        host=node$k
        addr=node$k
    fi
    node_lines+="NodeName=node$k NodeHostname=$host NodeAddr=$addr Port=$((port_base + k - 1))"
    node_lines+=" CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1"
    node_lines+=$' State=UNKNOWN\n'
done
if [ "$nodes" -eq 1 ]; then nodelist=node1; else nodelist="node[1-$nodes]"; fi

awk -v nodes="$node_lines" \
    -v mode="$mode" -v ctld_host="$ctld_host" -v ctld_addr="$ctld_addr" \
    -v ctld_port="$ctld_port" -v auth_info="$auth_info" -v state_save="$state_save" \
    -v run_dir="$run_dir" -v log_dir="$log_dir" -v spool_dir="$spool_dir" \
    -v tmp_dir="$tmp_dir" -v partition="$partition" -v nodelist="$nodelist" '
    function put(key, value) { gsub("@" key "@", value) }
    $0 == "@NODES@" { printf "%s", nodes; next }
    {
        put("MODE", mode); put("CTLD_HOST", ctld_host); put("CTLD_ADDR", ctld_addr)
        put("CTLD_PORT", ctld_port); put("AUTH_INFO", auth_info)
        put("STATE_SAVE", state_save); put("RUN_DIR", run_dir); put("LOG_DIR", log_dir)
        put("SPOOL_DIR", spool_dir); put("TMP_DIR", tmp_dir)
        put("PARTITION", partition); put("NODELIST", nodelist)
        if ($0 ~ /@[A-Z_]+@/) { print "gen-slurm-conf: unknown placeholder: " $0 > "/dev/stderr"; exit 1 }
        print
    }' "$here/slurm.conf.in"
