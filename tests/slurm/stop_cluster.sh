#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_cluster.sh started (by the pids in their pid files), nothing else.
set -uo pipefail
STARTED=/var/spool/moe-slurm/started
[ -f "$STARTED" ] || exit 0
while read -r pidfile; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stop_cluster: stopped $(basename "$pidfile" .pid) ($pid)"
done <"$STARTED"
: >"$STARTED"
