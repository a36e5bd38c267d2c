#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine for the real-Slurm test (tests/e2e/test_slurm_cluster.py):
# munged, slurmctld and slurmd, with a node named after `hostname -s` and the CPUs `slurmd -C` finds.
#
# Works in a container without systemd: no cgroups (proctrack/linuxproc, task/none), no accounting
# database (finished jobs stay visible to `scontrol show job` for MinJobAge seconds instead of sacct).
# Installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing and this is root.
# Idempotent: a cluster that already answers with an idle node is left alone.
# Exit codes: 0 up, 3 cannot start here (not root and not installed), anything else: failed (see output).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/moe-slurm
LOGS=/var/log/moe-slurm
HOST=$(hostname -s)

say() { echo "start_cluster: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# a live process of that name (a killed daemon can linger as a zombie, which pgrep still lists)
alive() {
  local pid
  for pid in $(pgrep -x "$1"); do
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && return 0
  done
  return 1
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-'; }

if have sinfo && [ "$(timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)" = idle ]; then
  say "cluster already up ($HOST idle)"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  say "needs root to install and start munged/slurmctld/slurmd"
  exit 3
fi

if ! have slurmctld || ! have slurmd || ! have sbatch || ! have munged || ! have pgrep; then
  say "installing slurmctld slurmd slurm-client munge procps (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge procps >/dev/null
fi

mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS" /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  # 1024 random bytes, readable by munge only (what mungekey(8) writes)
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
STARTED="$STATE/started"  # pid files of the daemons this script started (stop_cluster.sh ends those only)
: >"$STARTED"
if ! alive munged; then
  runuser -u munge -- /usr/sbin/munged
  echo /run/munge/munged.pid >>"$STARTED"
fi
for _ in $(seq 20); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null || { say "munged does not answer"; exit 1; }

# slurmctld and the job's rendezvous (MASTER_ADDR is this host's name) must resolve it
if ! getent hosts "$HOST" >/dev/null; then
  echo "127.0.0.1 $HOST" >>/etc/hosts
  say "added $HOST to /etc/hosts (it did not resolve)"
fi

# The node line exactly as slurmd sees this machine (a larger CPU or memory count would mark it invalid).
NODE=$(slurmd -C | head -n 1)
cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by tests/slurm/start_cluster.sh: one-node CI cluster.
ClusterName=moeci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (slurm.conf(5), AuthInfo; default 120 s,
# measured here: eligible 121 s after scontrol requeue); 30 s still leaves a step launch on a busy 2-core
# machine ample time to use its credential
AuthInfo=cred_expire=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/moe-slurmctld.pid
SlurmdPidFile=/run/moe-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups and no systemd in a CI container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# no accounting database: keep finished jobs in slurmctld for an hour so scontrol can report them
MinJobAge=3600
SlurmdTimeout=60
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

if ! alive slurmctld; then
  slurmctld
  echo /run/moe-slurmctld.pid >>"$STARTED"
fi
if ! alive slurmd; then
  slurmd
  echo /run/moe-slurmd.pid >>"$STARTED"
fi

# bounded wait for the node to register: 60 s
for i in $(seq 60); do
  state=$(node_state)
  case "$state" in
    idle) say "cluster up after ${SECONDS}s: node $HOST idle ($NODE)"; exit 0 ;;
    down|drained|drain) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
say "node $HOST did not become idle within 60 s (state: ${state:-none}); logs:"
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" 2>/dev/null || true
exit 1
