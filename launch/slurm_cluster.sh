#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests of the sbatch scripts (CI, laptops).
#
#   launch/slurm_cluster.sh up       install (Debian, as root) and start munged, slurmctld, slurmd
#   launch/slurm_cluster.sh status   daemons and `sinfo`; exit 1 when the cluster is not up
#   launch/slurm_cluster.sh down     cancel its jobs and stop the daemons it started (pid files)
#
# Everything lives in SLURM_CLUSTER_DIR (default /tmp/clip-slurm): slurm.conf, a private munge key
# and socket, state, spool, logs and pid files, so a system SLURM/munge is neither used nor touched.
# Clients must use the same config: `export SLURM_CONF=$SLURM_CLUSTER_DIR/slurm.conf` (printed by up).
# Env: SLURM_CLUSTER_CPUS (default 2), SLURM_CLUSTER_PORT (slurmctld port, default 16817; slurmd
# uses the next one). `up` is idempotent: a running cluster is left as it is.
set -euo pipefail

STATE_DIR=${SLURM_CLUSTER_DIR:-/tmp/clip-slurm}
CONF=$STATE_DIR/slurm.conf
MUNGE_SOCKET=$STATE_DIR/munge/munge.socket
CPUS=${SLURM_CLUSTER_CPUS:-2}
CTLD_PORT=${SLURM_CLUSTER_PORT:-16817}
NODE=$(hostname -s)
PACKAGES=(slurmd slurmctld slurm-client munge)

die() {
  echo "error: $*" >&2
  exit 2
}

pid_alive() {
  local pidfile=$1
  [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    return
  fi
  ((EUID == 0)) || die "SLURM is not installed and installing needs root; run: apt-get install -y ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get; install ${PACKAGES[*]}"
  echo "installing ${PACKAGES[*]}" >&2
  # Update the package lists only when the first install attempt cannot find the packages.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${PACKAGES[@]}" >/dev/null; } \
    || die "apt-get install ${PACKAGES[*]} failed; install them by hand"
}

# Memory SLURM may hand out: what the machine has, less a margin for the OS and the daemons.
real_memory_mb() {
  local total
  total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  echo $((total > 2048 ? total - 1024 : total / 2))
}

write_config() {
  mkdir -p "$STATE_DIR"/{munge,ctld,spool,logs}
  chmod 700 "$STATE_DIR/munge"
  cat >"$CONF" <<EOF
# Written by launch/slurm_cluster.sh: a one-node test cluster on $NODE (loopback addresses only).
ClusterName=cliptest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait cred_expire seconds before they may start again (default 120): keep tests short.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Scheduling passes every 2 s (defaults 60 s / 30 s): a released requeued job starts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/logs/slurmctld.log
SlurmdLogFile=$STATE_DIR/logs/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  pid_alive "$STATE_DIR/munged.pid" && return
  if [[ ! -s $STATE_DIR/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >"$STATE_DIR/munge/munge.key"
    chmod 400 "$STATE_DIR/munge/munge.key"
  fi
  # --force: accept the private directories' permissions, which munged would otherwise audit.
  munged --force --key-file="$STATE_DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE_DIR/munged.pid" --log-file="$STATE_DIR/logs/munged.log" \
    --seed-file="$STATE_DIR/munge/munge.seed" || die "munged did not start; see $STATE_DIR/logs/munged.log"
}

start_daemon() {
  local name=$1
  pid_alive "$STATE_DIR/$name.pid" && return
  SLURM_CONF=$CONF "$name" -f "$CONF" || die "$name did not start; see $STATE_DIR/logs/$name.log"
}

node_state() {
  SLURM_CONF=$CONF sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1 || true
}

wait_until_idle() {
  local state=""
  for _ in $(seq 1 60); do
    state=$(node_state)
    case $state in
      idle | mixed | allocated) return ;;
      down* | drain*) SLURM_CONF=$CONF scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
  done
  die "node $NODE is '${state:-unreachable}' after 60 s, not idle; see $STATE_DIR/logs/"
}

up() {
  install_packages
  if [[ ! -f $CONF ]] || ! pid_alive "$STATE_DIR/slurmctld.pid"; then
    write_config
  fi
  start_munge
  start_daemon slurmctld
  start_daemon slurmd
  wait_until_idle
  echo "SLURM test cluster up: $(node_state) node $NODE, $CPUS CPUs" >&2
  echo "export SLURM_CONF=$CONF"
}

status() {
  local name up=0
  for name in munged slurmctld slurmd; do
    if pid_alive "$STATE_DIR/$name.pid"; then
      echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
    else
      echo "$name: stopped"
      up=1
    fi
  done
  if ((up == 0)); then
    SLURM_CONF=$CONF sinfo || up=1
    echo "export SLURM_CONF=$CONF"
  fi
  return "$up"
}

down() {
  local name pid
  if pid_alive "$STATE_DIR/slurmctld.pid"; then
    SLURM_CONF=$CONF scancel --full --user="$(id -un)" 2>/dev/null || true
    sleep 2
  fi
  for name in slurmd slurmctld munged; do
    if pid_alive "$STATE_DIR/$name.pid"; then
      pid=$(cat "$STATE_DIR/$name.pid")
      kill "$pid"
      for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: launch/slurm_cluster.sh up|down|status (got '${1:-}')" ;;
esac
