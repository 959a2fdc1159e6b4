#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `slurm` tests and for trying the SLURM
# launchers (docs/slurm.md): `scripts/slurm.sh up` writes /etc/slurm/slurm.conf for this host
# (its cores and memory as read now) and starts munged, slurmctld and slurmd; `down` stops them
# and leaves nothing running; `status` says whether the cluster answers. Both are idempotent.
# Needs root and Debian's packages: apt-get install slurm-wlm munge.
# No accounting (slurmdbd): the project's SLURM launcher polls squeue, which needs none.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/var/tmp/cifar10-lab-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by cifar10-lab scripts/slurm.sh"
MUNGE_PID=/run/munge/munged.pid

die() { echo "slurm.sh: $*" >&2; exit 2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and is not ours: this script only runs a test cluster where there is none"
    fi
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # What slurmd will find, less 5% so that the node is never drained for reporting less.
    mem=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
    mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/spool"
    cat >"$CONF" <<CONF
$MARK for $host ($cpus cores, $mem MB): a one-node test cluster
ClusterName=cifar10lab
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# No cgroups in containers: plain process tracking, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# No accounting: sacct has nothing to report (see docs/slurm.md).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of time.
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (it starts munged, slurmctld and slurmd)"
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null ||
            die "$tool not found: apt-get install slurm-wlm munge"
    done
    export PATH=$PATH:/usr/sbin
    if ! alive "$MUNGE_PID"; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
        runuser -u munge -- munged
    fi
    if ! alive "$STATE/slurmctld.pid" || ! alive "$STATE/slurmd.pid"; then
        down quiet  # a half-started cluster: start both afresh on the current config
        alive "$MUNGE_PID" || runuser -u munge -- munged
        write_conf
        slurmctld
        slurmd
    fi
    for _ in $(seq 60); do  # the node registers within seconds
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "SLURM up: $(sinfo -h -o '%P %D node(s), %c CPUs, %m MB, %T')"
            return 0
        fi
        sleep 0.5
    done
    die "the node did not come up: see $STATE/slurmctld.log and $STATE/slurmd.log"
}

stop() {  # stop <pid file>: SIGTERM the daemon, wait for it to end
    local pidfile=$1 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    # Jobs first (their processes belong to slurmd's steps), then the daemons.
    if alive "$STATE/slurmctld.pid"; then
        scancel --full --quiet --state=RUNNING,PENDING --user="$(id -un)" 2>/dev/null || true
    fi
    stop "$STATE/slurmd.pid"
    stop "$STATE/slurmctld.pid"
    [ "${1:-}" = quiet ] && return 0
    stop "$MUNGE_PID"
    echo "SLURM down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo -h -o '%P %D node(s), %c CPUs, %m MB, %T' ;;
    *) die "usage: scripts/slurm.sh up|down|status" ;;
esac
