# mpiengine per-rank binding wrapper: pins one rank of a task to its placed CPUs and shows it
# only its placed GPUs, then execs the rank's command. POSIX sh (dash), no bash-isms: it runs
# once per rank, so it must start in about a millisecond.
#
#   sh bind_rank.sh RPN CPUS GPUS GPUVAR TILES -- COMMAND [ARG...]
#
# RPN     ranks per node (a rank's node index is its global rank / RPN, its local rank the rest)
# CPUS    the cores of each local rank, ranks separated by ':', nodes by ';' (one node group
#         stands for every node): "0,1:2,3" or "0:1;4:5"; "-" to leave CPU binding alone
# GPUS    the same for GPU ids ("0:1:2:3"); "-" to leave the GPU variable alone
# GPUVAR  CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or ZE_AFFINITY_MASK; "-" for none
# TILES   tiles per GPU: GPU slot S is shown as "S/TILES.S%TILES" (ZE_AFFINITY_MASK tile
#         syntax) when TILES > 1
#
# The rank is read from whichever launcher started it: Slurm (SLURM_LOCALID, SLURM_PROCID),
# MPICH hydra (MPI_LOCALRANKID, PMI_RANK), Cray PALS (PALS_LOCAL_RANKID, PALS_RANKID), Open MPI
# (OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_RANK), ALPS (ALPS_APP_PE), PMIx (PMIX_RANK).
#
# CPU pinning uses taskset on this shell, so the command inherits it through exec. Where the
# site forbids it (a cpuset cgroup that holds other cores), the launcher's own binding is kept
# and one line on stderr says so: the task still runs, never on a core it was not given.

if [ "$#" -lt 6 ] || [ "$6" != "--" ]; then
    echo "bind_rank.sh: usage: RPN CPUS GPUS GPUVAR TILES -- COMMAND [ARG...]" >&2
    exit 127
fi
rpn=$1 cpus=$2 gpus=$3 gpuvar=$4 tiles=$5
shift 6

# The first variable that is set, among the names given; empty if none.
first_set() {
    for _name in "$@"; do
        eval "_value=\${$_name-}"
        if [ -n "$_value" ]; then
            printf '%s' "$_value"
            return 0
        fi
    done
    return 1
}

grank=$(first_set SLURM_PROCID PMI_RANK PALS_RANKID OMPI_COMM_WORLD_RANK ALPS_APP_PE PMIX_RANK) ||
    grank=0
lrank=$(first_set SLURM_LOCALID MPI_LOCALRANKID PALS_LOCAL_RANKID OMPI_COMM_WORLD_LOCAL_RANK) ||
    lrank=$((grank % rpn))
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
