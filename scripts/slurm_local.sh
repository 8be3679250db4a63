#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for pmopt's SLURM tests and for trying docs/cluster.md.
#   sudo scripts/slurm_local.sh start    # install (Debian) if missing, configure, start, wait for the node
#   sudo scripts/slurm_local.sh status   # the daemons and `sinfo`
#   sudo scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged (by their pids)
#
# What it sets up: munged with a key, /etc/slurm/slurm.conf naming this host (short name) as both the
# controller and the only node, with the CPUs and memory `slurmd -C` finds, and one partition `debug`.
# Plugins are the ones that need no cgroups, systemd or accounting database, so the cluster runs in a
# container: proctrack/linuxproc, task/none, jobacct_gather/none, and select/cons_tres with CR_Core so
# that each CPU core is one allocatable unit (two one-CPU array tasks run at once on two cores).
# State, logs and pid files live in $PMOPT_SLURM_DIR (default /var/lib/pmopt-slurm). A slurm.conf this
# script did not write is never overwritten: on a machine with a real cluster, use that cluster.
set -euo pipefail

STATE=${PMOPT_SLURM_DIR:-/var/lib/pmopt-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by pmopt scripts/slurm_local.sh"
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (the daemons run as root here: SlurmUser=root)"; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "SLURM is not installed and this is not a Debian/Ubuntu machine: install ${PACKAGES[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

write_munge_key() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
}

write_slurm_conf() {
  if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real cluster's configuration"
  fi
  local host node
  host=$(hostname -s)
  # `slurmd -C` prints this node's line as slurmd will see it (sockets, cores, threads, RealMemory), so
  # the node never drains for claiming more than it has; less 5% of memory for the system
  node=$(slurmd -C | head -n 1 | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) {
           split($i, m, "="); $i = "RealMemory=" int(m[2] * 0.95)} print}')
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
  cat >"$CONF" <<EOF
$MARK
ClusterName=pmopt-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# a cancelled task is signalled SIGTERM, then SIGKILL this many seconds later
KillWait=10
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  alive "$MUNGE_PID" && return
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
}

start() {
  need_root
  install_packages
  write_munge_key
  write_slurm_conf
  start_munge
  alive "$STATE/slurmctld.pid" || slurmctld
  alive "$STATE/slurmd.pid" || slurmd
  local host
  host=$(hostname -s)
  for _ in $(seq 60); do
    if [ "$(sinfo -h -n "$host" -o %t 2>/dev/null)" = idle ]; then
      echo "slurm_local.sh: node $host idle ($(sinfo -h -n "$host" -o '%c CPUs, %m MB'))"
      return
    fi
    sleep 1
  done
  sinfo >&2 || true
  die "node $host did not become idle in 60 s (logs: $STATE/slurmctld.log, $STATE/slurmd.log)"
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, then wait up to 15 s for the process to go
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && die "$1 (pid $pid) did not stop"
  fi
  rm -f "$2"
}

stop() {
  need_root
  stop_pid slurmd "$STATE/slurmd.pid"
  stop_pid slurmctld "$STATE/slurmctld.pid"
  stop_pid munged "$MUNGE_PID"
  echo "slurm_local.sh: stopped"
}

status() {
  local name file
  for name in munged slurmctld slurmd; do
    case $name in munged) file=$MUNGE_PID ;; *) file=$STATE/$name.pid ;; esac
    if alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: not running"; fi
  done
  sinfo 2>/dev/null || true
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
