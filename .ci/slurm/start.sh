#!/usr/bin/env bash
# Starts munged, slurmctld and two emulated nodes (`slurmd -N fnode1`, `slurmd -N fnode2`) on
# loopback with the configuration beside this script; waits until both nodes are idle.
# Needs root and Debian's slurmctld slurmd slurm-client munge. Stop with stop.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=${FRAGMENTA_SLURM_RUN:-/tmp/fragmenta-slurm}
host=$(hostname -s)
# What an earlier start left running is stopped first: the ports and pid files are fixed.
FRAGMENTA_SLURM_RUN="$run" FRAGMENTA_SLURM_STOP_MUNGE=0 "$here/stop.sh"
mkdir -p "$run/state" /etc/slurm
sed -e "s|@HOST@|$host|g" -e "s|@RUN@|$run|g" "$here/slurm.conf" > /etc/slurm/slurm.conf

# munge: a key if the package did not make one, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! munge -n >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
  else
    munged --force
  fi
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null

slurmctld -i
for node in fnode1 fnode2; do
  mkdir -p "$run/spool-$node"
  slurmd -N "$node"
done
for _ in $(seq 100); do
  if [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = 2 ]; then
    echo "slurm: nodes up: $(sinfo -h -N -o '%N %T' | tr '\n' ' ')"
    exit 0
  fi
  sleep 0.2
done
echo "slurm: nodes did not come up" >&2
sinfo -N >&2 || true
tail -n 20 "$run"/slurmctld.log "$run"/slurmd-*.log >&2 || true
exit 1
