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
if [ -f /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
exit 0
