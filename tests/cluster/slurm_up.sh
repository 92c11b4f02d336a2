#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests that submit the workflow through `sbatch`.
#
#   tests/cluster/slurm_up.sh start    install slurm-wlm and munge if missing (root, Debian), start munged, slurmctld
#                                      and slurmd, wait until `sinfo` shows the node idle; prints the SLURM_CONF to use
#   tests/cluster/slurm_up.sh stop     stop only the daemons this script started
#   tests/cluster/slurm_up.sh status   exit 0 when the cluster answers
#
# Idempotent: a second `start` finds the running cluster and leaves it be. Everything (config, state, logs, pid
# files) lives in $LESSON2_SLURM_DIR (default /tmp/lesson2-slurm), with its own ports, so the system's /etc/slurm and
# any real cluster on the machine are left alone. Clients find it through SLURM_CONF=$LESSON2_SLURM_DIR/slurm.conf.
set -euo pipefail

DIR=${LESSON2_SLURM_DIR:-/tmp/lesson2-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
NODE=$(hostname -s)

log() { echo "slurm_up: $*" >&2; }
fail() { log "$*"; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and this is not a Debian-like system"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null; } \
        || fail "apt-get could not install slurm-wlm and munge"
}

munge_answers() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_answers && return
    [ -s /etc/munge/munge.key ] || mungekey -c
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/started-munged"
    for _ in $(seq 50); do munge_answers && return; sleep 0.1; done
    fail "munged did not answer"
}

write_config() {
    local cpus memory_mb limit
    cpus=$(nproc)
    memory_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
    [ "$limit" != max ] && memory_mb=$((limit / 1048576 < memory_mb ? limit / 1048576 : memory_mb))
    mkdir -p "$DIR/state" "$DIR/spool"
    # Memory is checked against the node but not consumed (CR_Core), so the tests' jobs run side by side as they
    # would on a real node; MinJobAge keeps finished jobs in `squeue --states=all`, which is all a cluster without
    # an accounting database remembers.
    cat >"$CONF" <<EOF
ClusterName=lesson2
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=86400
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldParameters=enable_configless
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((memory_mb - 1024)) State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() { [ "$(sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null)" = idle ]; }

running() { [ -s "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {
    install_packages
    mkdir -p "$DIR"
    if running slurmctld && running slurmd && node_idle; then
        log "already running"
        echo "SLURM_CONF=$CONF"
        return
    fi
    start_munge
    write_config
    # -i: a fresh start ignores job state a previous run of this script left behind
    running slurmctld || { slurmctld -i -f "$CONF" && touch "$DIR/started-slurmctld"; }
    # Configless: slurmd fetches the config from slurmctld and leaves a copy in /run/slurm/conf, where the srun that
    # a job step calls finds it (snakemake's job step drops SLURM_CONF from the environment it gives srun).
    running slurmd || { slurmd --conf-server 127.0.0.1:16817 -N "$NODE" && touch "$DIR/started-slurmd"; }
    for _ in $(seq 150); do
        if node_idle; then
            log "node $NODE idle ($(sinfo --noheader --format='%c CPUs, %m MB' --nodes="$NODE"))"
            echo "SLURM_CONF=$CONF"
            return
        fi
        # A node left "down" by an earlier, unclean stop comes back once told so.
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 0.2
    done
    fail "the node did not become idle within 30 s: see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop_daemon() {
    local name=$1 pid_file=$2
    [ -e "$DIR/started-$name" ] || return 0
    if [ -s "$pid_file" ]; then
        local pid
        pid=$(cat "$pid_file")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/started-$name"
}

stop() {
    stop_daemon slurmd "$DIR/slurmd.pid"
    # Our configless slurmd's config cache, also one a killed run left: left behind, every Slurm client here (and
    # so every `snakemake`, whose Slurm plugin runs `scontrol show config` as it starts) waits 9 s for a controller
    # that is gone.
    if grep -qsx "ClusterName=lesson2" /run/slurm/conf/slurm.conf && ! running slurmd; then
        rm -rf /run/slurm/conf
    fi
    stop_daemon slurmctld "$DIR/slurmctld.pid"
    stop_daemon munged /run/munge/munged.pid
    log "stopped what this script started"
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) running slurmctld && running slurmd && node_idle ;;
    *) fail "usage: $0 start|stop|status" ;;
esac
