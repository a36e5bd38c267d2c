#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_cluster.sh started (by the pids in their pid files), nothing else.
set -uo pipefail
STARTED=/var/spool/moe-slurm/started
[ -f "$STARTED" ] || exit 0
# another test session on this machine may still be using the cluster: leave it up then
if [ -n "$(timeout 10 squeue -h 2>/dev/null)" ]; then
  echo "stop_cluster: jobs still queued or running; leaving the cluster up"
  exit 0
fi
while read -r pidfile; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stop_cluster: stopped $(basename "$pidfile" .pid) ($pid)"
done <"$STARTED"
: >"$STARTED"
