#!/usr/bin/env bash
# Stops what start.sh started (by the pid files it wrote); harmless when nothing runs.
run=${FRAGMENTA_SLURM_RUN:-/tmp/fragmenta-slurm}
for pidfile in "$run"/slurmd-*.pid "$run"/slurmctld.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
done
# munged is left to its own pid file only when this script's caller asks (start.sh reuses a
# running munged).
if [ "${FRAGMENTA_SLURM_STOP_MUNGE:-1}" = 1 ] && [ -f /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
exit 0
