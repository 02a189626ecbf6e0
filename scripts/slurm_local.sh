#!/usr/bin/env bash
# A real one-node Slurm on this machine, on loopback, for the end-to-end launcher tests (and for trying the
# launchers without a cluster). Needs root for apt-get (Debian's slurm-wlm) and for the daemons.
#   SLURM_DIR=/tmp/medlsdm-slurm bash scripts/slurm_local.sh up     # then: export SLURM_CONF=$SLURM_DIR/slurm.conf
#   SLURM_DIR=/tmp/medlsdm-slurm bash scripts/slurm_local.sh down
# FAKE_GPUS=N (default 1) advertises N "gpu" resources backed by dummy device nodes, so the launchers' #SBATCH GPU
# requests are accepted unchanged on a CPU-only machine (the jobs then run with trainer.accelerator=cpu).
set -euo pipefail
cmd=${1:?usage: slurm_local.sh up|down}
D=${SLURM_DIR:-/tmp/medlsdm-slurm}
export SLURM_CONF="$D/slurm.conf"

stop_daemons() {
  if command -v scancel >/dev/null && [ -f "$SLURM_CONF" ]; then scancel --quiet --full --user="$(id -un)" 2>/dev/null || true; fi
  for pidfile in "$D/slurmd.pid" "$D/slurmctld.pid"; do
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$pidfile"
    fi
  done
}

case "$cmd" in
up)
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null
  fi
  stop_daemons
  mkdir -p "$D"/{state,spool/slurmd-localhost,log,fakegpu}
  ncpu=$(nproc)
  mem=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 ))
  ngpu=${FAKE_GPUS:-1}
  gres_line=""
  : > "$D/gres.conf"
  if [ "$ngpu" -gt 0 ]; then
    gres_line="Gres=gpu:$ngpu"
    for i in $(seq 0 $((ngpu - 1))); do
      # slurmd drops a GPU without a File=, and wants a character device (major 195 = nvidia); nothing opens it.
      [ -e "$D/fakegpu/nvidia$i" ] || mknod "$D/fakegpu/nvidia$i" c 195 "$i"
      echo "NodeName=localhost Name=gpu File=$D/fakegpu/nvidia$i" >> "$D/gres.conf"
    done
  fi
  cat > "$SLURM_CONF" <<CONF
ClusterName=medlsdm
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# A requeued job may start again after cred_expire seconds (default 120): short for a one-node test cluster.
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmctldPort=${SLURM_CTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/slurmd-%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=5
Waittime=0
$([ "$ngpu" -gt 0 ] && echo GresTypes=gpu)
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu Sockets=1 CoresPerSocket=$ncpu ThreadsPerCore=1 RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld -i
  slurmd -N localhost
  for _ in $(seq 1 150); do
    [ "$(sinfo -h -o %T 2>/dev/null || true)" = idle ] && { echo "slurm up: SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.2
  done
  echo "slurm node did not become idle; logs in $D/log" >&2
  sinfo -R >&2 || true
  exit 1
  ;;
down)
  stop_daemons
  [ "${KEEP_DIR:-0}" = 1 ] || rm -rf "$D"
  ;;
*)
  echo "usage: slurm_local.sh up|down" >&2
  exit 2
  ;;
esac
