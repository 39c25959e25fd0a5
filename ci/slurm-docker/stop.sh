#!/usr/bin/env bash
# Stop exactly the daemons start.sh started, by the PIDs it recorded (never by name): cancel the
# cluster's jobs, SIGTERM the slurmds, slurmctld and munged, SIGKILL what is still running after
# SLURM_STOP_GRACE seconds (10), and remove the /etc/hosts line start.sh added.
# Logs stay in <state>/log for inspection; the next start wipes them with the rest.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { err "must run as root"; exit 1; }
if [ ! -d "$STATE" ]; then
    log "nothing to stop ($STATE does not exist)"
    exit 0
fi
exec 9>"$STATE/.lock"
flock -w 300 9 || { err "another start/stop holds $STATE/.lock"; exit 1; }

T0=${EPOCHREALTIME/./}
stopped=$(recorded_names | tr '\n' ' ')
stop_cluster
rm -f "$STATE/env.sh"
us=$((${EPOCHREALTIME/./} - T0))
if [ -n "$stopped" ]; then
    log "stopped ${stopped% } in $((us / 1000)) ms"
else
    log "nothing was running"
fi
