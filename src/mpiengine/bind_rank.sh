# mpiengine per-rank binding wrapper: pins one rank of a task to its placed CPUs and shows it
# only its placed GPUs, then execs the rank's command. POSIX sh (dash), no bash-isms: it runs
# once per rank, so it must start in about a millisecond.
#
#   sh bind_rank.sh RANKVAR LOCALVAR RPN CPUS GPUS GPUVAR TILES -- COMMAND [ARG...]
#
# RANKVAR the variable holding this rank's global rank, as the launcher that started it sets it
#         (SLURM_PROCID, PMI_RANK, PALS_RANKID, OMPI_COMM_WORLD_RANK, ALPS_APP_PE); "-": rank 0
# LOCALVAR the variable holding its rank on its node (SLURM_LOCALID, MPI_LOCALRANKID, ...);
#         "-": global rank modulo RPN (block distribution)
# RPN     ranks per node (a rank's node index is its global rank / RPN)
# CPUS    the cores of each local rank, ranks separated by ':', nodes by ';' (one node group
#         stands for every node): "0,1:2,3" or "0:1;4:5"; "-" to leave CPU binding alone
# GPUS    the same for GPU ids ("0:1:2:3"); "-" to leave the GPU variable alone
# GPUVAR  CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or ZE_AFFINITY_MASK; "-" for none
# TILES   tiles per GPU: GPU slot S is shown as "S/TILES.S%TILES" (ZE_AFFINITY_MASK tile
#         syntax) when TILES > 1
#
# Only the named variables are read: under mpiexec inside a Slurm job every rank also inherits
# SLURM_PROCID=0 from hydra's proxy step, which is no rank of the task.
#
# CPU pinning uses taskset on this shell, so the command inherits it through exec. Where the
# site forbids it (a cpuset cgroup that holds other cores), the launcher's own binding is kept
# and one line on stderr says so: the task still runs, never on a core it was not given.

if [ "$#" -lt 8 ] || [ "$8" != "--" ]; then
    echo "bind_rank.sh: usage: RANKVAR LOCALVAR RPN CPUS GPUS GPUVAR TILES -- COMMAND [ARG...]" >&2
    exit 127
fi
rankvar=$1 localvar=$2 rpn=$3 cpus=$4 gpus=$5 gpuvar=$6 tiles=$7
shift 8

# The value of the variable named $1 ("-": none) into $value; false when unset or empty.
value_of() {
    value=
    case $1 in -) return 1 ;; esac
    eval "value=\${$1-}"
    [ -n "$value" ]
}

grank=0
if value_of "$rankvar"; then grank=$value; fi
lrank=$((grank % rpn))
if value_of "$localvar"; then lrank=$value; fi
node=$((grank / rpn))

# Field INDEX (0-based, wrapping around) of LIST split on SEP, into $field.
pick() {
    _index=$1 _old_ifs=$IFS
    IFS=$2
    set -f
    # shellcheck disable=SC2086
    set -- $3
    set +f
    IFS=$_old_ifs
    field=
    [ "$#" -gt 0 ] || return 0
    shift $((_index % $#))
    field=$1
}

# The entry of this rank in a "node;node" list of "rank:rank" groups, into $field.
mine() {
    pick "$node" ';' "$1"
    pick "$lrank" ':' "$field"
}

if [ "$gpus" != "-" ] && [ "$gpuvar" != "-" ]; then
    mine "$gpus"
    if [ "$tiles" -gt 1 ]; then
        _tiled=
        _old_ifs=$IFS
        IFS=,
        for _slot in $field; do
            _tiled="$_tiled${_tiled:+,}$((_slot / tiles)).$((_slot % tiles))"
        done
        IFS=$_old_ifs
        field=$_tiled
    fi
    export "$gpuvar=$field"
fi

if [ "$cpus" != "-" ]; then
    mine "$cpus"
    if ! taskset -p -c "$field" $$ >/dev/null 2>&1; then
        echo "mpiengine: rank $grank could not be pinned to CPUs $field (kept the launcher's binding)" >&2
    fi
fi

exec "$@"
