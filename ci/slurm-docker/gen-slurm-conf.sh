#!/usr/bin/env bash
# Render slurm.conf.in for N CPU nodes x C CPUs (partition debug) and K GPU nodes x GC CPUs x G
# GPUs (partition gpu, GRES gpu:G on fake devices).
#
#   gen-slurm-conf.sh --mode host   --nodes 4 --cpus 2 --state DIR   (one host, start.sh)
#   gen-slurm-conf.sh --mode docker --nodes 4 --cpus 2               (docker-compose.yml)
#   gen-slurm-conf.sh ... --gres-conf   writes gres.conf instead of slurm.conf
#   options: --gpu-nodes K (1), --gpu-cpus GC (4), --gpus G (4)
#
# Writes to stdout. Node names are node1..nodeN, then nodeN+1..nodeN+K for the GPU nodes, and
# slurmd K listens on port PORT_BASE+K-1 in both modes, so the two layouts differ only in
# addresses, hostnames and paths. gres.conf names the device files DEVDIR/gpu0..gpuG-1 (DEVDIR:
# <state>/dev in host mode, /dev/fakegpu in docker mode), which start.sh and the container
# entrypoint create as character devices: slurmd only stats them.
#
# Why a separate GPU node: a CPU node must declare no more CPUs than this 2-core host has, or its
# CPU binding could not be real; four one-GPU tasks on one node need four CPUs. The GPU node
# declares 4 CPUs and its CPU binding is not checked.
# Env: SLURM_CTLD_PORT (6817), SLURMD_PORT_BASE (17001), SLURM_PARTITION (debug).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=host
nodes=${SLURM_NODES:-4}
cpus=${SLURM_CPUS:-2}
gpu_nodes=${SLURM_GPU_NODES:-1}
gpu_cpus=${SLURM_GPU_CPUS:-4}
gpus=${SLURM_GPUS:-4}
what=slurm.conf
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
        --gpu-nodes) gpu_nodes=$2; shift 2 ;;
        --gpu-cpus) gpu_cpus=$2; shift 2 ;;
        --gpus) gpus=$2; shift 2 ;;
        --gres-conf) what=gres.conf; shift ;;
        --state) state=$2; shift 2 ;;
        *) usage ;;
    esac
done

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_count "$nodes" || { echo "gen-slurm-conf: --nodes must be a positive integer" >&2; exit 2; }
is_count "$cpus" || { echo "gen-slurm-conf: --cpus must be a positive integer" >&2; exit 2; }
is_count "$gpu_cpus" || { echo "gen-slurm-conf: --gpu-cpus must be a positive integer" >&2; exit 2; }
is_count "$gpus" || { echo "gen-slurm-conf: --gpus must be a positive integer" >&2; exit 2; }
[[ $gpu_nodes =~ ^[0-9]+$ ]] || { echo "gen-slurm-conf: --gpu-nodes must be >= 0" >&2; exit 2; }

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
        dev_dir=$state/dev
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
        dev_dir=/dev/fakegpu
        ;;
    *) usage ;;
esac

# A Slurm host list for nodes FIRST..LAST.
range() { if [ "$1" -eq "$2" ]; then echo "node$1"; else echo "node[$1-$2]"; fi; }
gpu_first=$((nodes + 1))
gpu_last=$((nodes + gpu_nodes))
if [ "$what" = gres.conf ]; then
    echo "# gres.conf for the mpiengine CI cluster, rendered by gen-slurm-conf.sh (mode $mode)."
    echo "# Fake GPUs: character devices that slurmd can stat; no driver behind them."
    if [ "$gpu_nodes" -gt 0 ]; then
        echo "NodeName=$(range "$gpu_first" "$gpu_last") Name=gpu File=$dev_dir/gpu[0-$((gpus - 1))]"
    fi
    exit 0
fi

node_lines=""
for k in $(seq 1 "$gpu_last"); do
    if [ "$mode" = host ]; then
        # Every slurmd runs on this host (Debian builds slurmd with MULTIPLE_SLURMD).
        host=$ctld_host
        addr=127.0.0.1
    else
        host=node$k
        addr=node$k
    fi
    node_lines+="NodeName=node$k NodeHostname=$host NodeAddr=$addr Port=$((port_base + k - 1))"
    if [ "$k" -le "$nodes" ]; then
        node_lines+=" CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1"
    else
        node_lines+=" CPUs=$gpu_cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$gpu_cpus"
        node_lines+=" ThreadsPerCore=1 Gres=gpu:$gpus"
    fi
    node_lines+=$' State=UNKNOWN\n'
done
nodelist=$(range 1 "$nodes")
gpu_partition="# no GPU nodes"
if [ "$gpu_nodes" -gt 0 ]; then
    gpu_partition="PartitionName=gpu Nodes=$(range "$gpu_first" "$gpu_last") MaxTime=INFINITE State=UP"
fi

awk -v nodes="$node_lines" \
    -v mode="$mode" -v ctld_host="$ctld_host" -v ctld_addr="$ctld_addr" \
    -v ctld_port="$ctld_port" -v auth_info="$auth_info" -v state_save="$state_save" \
    -v run_dir="$run_dir" -v log_dir="$log_dir" -v spool_dir="$spool_dir" \
    -v tmp_dir="$tmp_dir" -v partition="$partition" -v nodelist="$nodelist" \
    -v gpu_partition="$gpu_partition" '
    function put(key, value) { gsub("@" key "@", value) }
    $0 == "@NODES@" { printf "%s", nodes; next }
    {
        put("MODE", mode); put("CTLD_HOST", ctld_host); put("CTLD_ADDR", ctld_addr)
        put("CTLD_PORT", ctld_port); put("AUTH_INFO", auth_info)
        put("STATE_SAVE", state_save); put("RUN_DIR", run_dir); put("LOG_DIR", log_dir)
        put("SPOOL_DIR", spool_dir); put("TMP_DIR", tmp_dir)
        put("PARTITION", partition); put("NODELIST", nodelist)
        put("GPU_PARTITION", gpu_partition)
        if ($0 ~ /@[A-Z_]+@/) { print "gen-slurm-conf: unknown placeholder: " $0 > "/dev/stderr"; exit 1 }
        print
    }' "$here/slurm.conf.in"
