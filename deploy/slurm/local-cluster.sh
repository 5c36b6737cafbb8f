#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying (and testing) the
# array job in nrvna-members.sbatch without a real cluster.
#
#   deploy/slurm/local-cluster.sh start DIR   # prints the SLURM_CONF to export
#   deploy/slurm/local-cluster.sh stop DIR
#
# Needs root: it installs Debian's slurmctld, slurmd, slurm-client and munge
# when they are missing, starts munged, and runs slurmctld and slurmd (as
# root) with their state, spool and logs under DIR. Ports 16817/16818.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "local-cluster.sh: needs root (it runs munged, slurmctld and slurmd)" >&2
    exit 1
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"

stop() {
    for p in slurmd slurmctld; do
        if [[ -f "$dir/$p.pid" ]]; then
            kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 50); do
        if ! { [[ -f "$dir/slurmd.pid" ]] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null; } &&
           ! { [[ -f "$dir/slurmctld.pid" ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; }; then
            break
        fi
        sleep 0.1
    done
    rm -f "$dir/slurmd.pid" "$dir/slurmctld.pid"
}

case "$cmd" in
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
   ! command -v munged >/dev/null; then
    echo "local-cluster.sh: installing slurmctld slurmd slurm-client munge" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >&2
fi

# munge: one key, one daemon (shared with anything else on this host).
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --force >&2
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- munged >&2 || munged --force >&2
    for _ in $(seq 50); do
        munge -n </dev/null >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
munge -n </dev/null | unmunge >/dev/null

stop
host="$(hostname -s)"
cpus="$(nproc)"
mkdir -p "$dir/state" "$dir/spool"
cat >"$conf" <<EOF
ClusterName=nrvna-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$conf"
slurmctld -f "$conf" -c -i >&2
slurmd -f "$conf" -c >&2
for _ in $(seq 150); do
    state="$(sinfo -h -N -o %t 2>/dev/null | head -1)"
    if [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]; then
        echo "$conf"
        exit 0
    fi
    sleep 0.2
done
echo "local-cluster.sh: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
