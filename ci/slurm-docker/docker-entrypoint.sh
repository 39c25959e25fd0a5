#!/usr/bin/env bash
# Container entrypoint for docker-compose.yml. Roles:
#   keygen     create the shared munge key on the munge-key volume if missing, then exit
#   slurmctld  munged + slurmctld (foreground)
#   slurmd     munged + slurmd for the node named by this container's hostname (foreground)
# Env: SLURM_NODES, SLURM_CPUS, SLURM_GPU_NODES, SLURM_GPU_CPUS, SLURM_GPUS (must match the compose
# file; tests check it).
set -euo pipefail

role=${1:-slurmd}
key=/etc/munge/munge.key

if [ "$role" = keygen ]; then
    if [ ! -s "$key" ]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$key"
    chmod 0400 "$key"
    exit 0
fi

gen=(/opt/slurm-ci/gen-slurm-conf.sh --mode docker --nodes "${SLURM_NODES:-4}"
    --cpus "${SLURM_CPUS:-2}" --gpu-nodes "${SLURM_GPU_NODES:-1}" --gpu-cpus "${SLURM_GPU_CPUS:-4}"
    --gpus "${SLURM_GPUS:-4}")
"${gen[@]}" >/etc/slurm/slurm.conf
"${gen[@]}" --gres-conf >/etc/slurm/gres.conf
# Fake GPUs: character devices slurmd can stat (see gen-slurm-conf.sh).
mkdir -p /dev/fakegpu
for ((g = 0; g < ${SLURM_GPUS:-4}; g++)); do
    [ -e "/dev/fakegpu/gpu$g" ] || mknod -m 0666 "/dev/fakegpu/gpu$g" c 195 "$g"
done
mkdir -p /run/munge /var/lib/slurm/ctld /run/slurm /var/log/slurm /var/spool/slurm \
    "/var/tmp/slurm/$(hostname)"
chown munge:munge /run/munge

# munged daemonizes; the container's main process is the Slurm daemon.
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged

case $role in
    slurmctld) exec /usr/sbin/slurmctld -D ;;
    slurmd) exec /usr/sbin/slurmd -D -N "$(hostname)" ;;
    *) echo "docker-entrypoint: unknown role $role (keygen|slurmctld|slurmd)" >&2; exit 2 ;;
esac
