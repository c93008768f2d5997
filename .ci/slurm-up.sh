#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the workflow's SLURM test
# (tests/test_slurm.py): Debian's slurm-wlm + munge, installed if missing; munged, slurmctld and
# slurmd started by hand (no systemd needed). Idempotent: running daemons are reused. Needs root.
#
# The config goes to /etc/slurm/slurm.conf, where the executor plugin's inner `srun` finds it
# (the plugin drops SLURM_* variables, SLURM_CONF included). It has partitions `cpu` and `gpu`,
# the names in workflow/profiles/slurm/profile.yaml. No accounting daemon: use
# `--slurm-status-command squeue --slurm-no-account`. DefMemPerCPU keeps a job from taking the
# whole node's memory, so jobs run side by side.
#
# Usage: .ci/slurm-up.sh [STATE_DIR]   (default /var/tmp/ifss-slurm; daemon logs are there)
set -euo pipefail

state=${1:-/var/tmp/ifss-slurm}
conf=/etc/slurm/slurm.conf
marker="# written by ifss .ci/slurm-up.sh"

if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root (apt-get, daemons, /etc/slurm)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm-up: installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: a key, a socket folder, the daemon
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: ours, or none yet (a real cluster's config is left alone)
if [ -e "$conf" ] && ! grep -qF "$marker" "$conf"; then
  echo "slurm-up: $conf exists and was not written by this script; not touching it" >&2
  exit 1
fi
host=$(hostname -s)
mkdir -p "$state/state" "$state/spool" /etc/slurm
node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=... RealMemory=... as detected
cat > "$conf.new" <<CONF
$marker
ClusterName=ifss-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MpiDefault=none
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
changed=1
if [ -e "$conf" ] && cmp -s "$conf" "$conf.new"; then changed=0; fi
mv "$conf.new" "$conf"

running() { [ -s "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
if running slurmctld && [ "$changed" = 1 ]; then scontrol reconfigure; fi
running slurmctld || /usr/sbin/slurmctld
running slurmd || /usr/sbin/slurmd

for _ in $(seq 60); do
  st=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1 || true)
  case "$st" in
    idle*|mixed*|allocated*) echo "slurm-up: node $host is $st"; exit 0 ;;
    down*|drain*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
echo "slurm-up: node $host did not come up (state: ${st:-unknown}); see $state/slurmctld.log" >&2
exit 1
