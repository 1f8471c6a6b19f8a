#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for CI and for trying `hydra/launcher=slurm` on a laptop.
#
#   slurm/start-local-cluster.sh [--gpus N] [--munge]      # as root; installs the Debian packages if missing
#   eval "$(slurm/start-local-cluster.sh | tail -n1)"      # its last line is `export SLURM_CONF=...`
#   slurm/stop-local-cluster.sh                            # ends only the daemons this script started
#
# No systemd: MariaDB (127.0.0.1 only), slurmdbd, slurmctld and slurmd are started by hand, each with a pid
# file under the state dir ($EMROBUST_SLURM_DIR, default /tmp/emrobust-slurm). slurmdbd makes `sacct` work,
# which submitit needs to notice finished, failed or killed jobs. Partition `debug` (default), the node has
# this machine's real CPUs and memory (`slurmd -C`); `--gpus N` adds N fake GPUs (device nodes made with
# mknod under the state dir + gres.conf) so `--gpus` requests and CUDA_VISIBLE_DEVICES can be tested.
# Authentication is auth/none (anyone on this machine can submit as anyone: a CI/laptop cluster only);
# `--munge` uses munge with a key under the state dir instead. Idempotent: a cluster running with the same options is just reported
# (other options: it is restarted).
# Ports (env): EMROBUST_SLURM_PORT_BASE (default 6817: slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB).
set -euo pipefail

DIR="${EMROBUST_SLURM_DIR:-/tmp/emrobust-slurm}"
PORT_BASE="${EMROBUST_SLURM_PORT_BASE:-6817}"
CTLD_PORT=$PORT_BASE; SLURMD_PORT=$((PORT_BASE + 1)); DBD_PORT=$((PORT_BASE + 2)); DB_PORT=$((PORT_BASE + 3))
GPUS=0
MUNGE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --gpus=*) GPUS="${1#*=}"; shift ;;
    --munge) MUNGE=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "start-local-cluster: unknown argument $1" >&2; exit 2 ;;
  esac
done
export SLURM_CONF="$DIR/etc/slurm.conf"
T0=$(date +%s.%N)
log() { echo "[start-local-cluster] $*" >&2; }
elapsed() { echo "$(date +%s.%N) $T0" | awk '{printf "%.1f", $1 - $2}'; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (it installs packages and starts daemons as root)"; exit 77
fi

# ---------------------------------------------------------------- already running: just report
OPTIONS="gpus=$GPUS munge=$MUNGE ports=$PORT_BASE"
if alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" && alive "$DIR/run/slurmdbd.pid" \
   && alive "$DIR/run/mariadb.pid" && scontrol ping >/dev/null 2>&1 \
   && [[ "$(cat "$DIR/etc/options" 2>/dev/null)" == "$OPTIONS" ]]; then
  log "already running (state dir $DIR, $OPTIONS)"
  sinfo >&2 || true
  echo "export SLURM_CONF=$SLURM_CONF"
  exit 0
fi

# ---------------------------------------------------------------- packages (only if missing)
PKGS=(slurmctld slurmd slurm-client slurmdbd mariadb-server)
[[ $MUNGE == 1 ]] && PKGS+=(munge)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  command -v apt-get >/dev/null || { log "apt-get not available; install ${missing[*]} yourself"; exit 78; }
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # the packages' init scripts would start system-wide daemons; we start our own below
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  log "installed in $(elapsed)s"
fi
# a package's postinst may have started the system-wide daemons on the default ports; we don't touch them,
# but say so if a port we need is taken
for port in $CTLD_PORT $SLURMD_PORT $DBD_PORT $DB_PORT; do
  if ss -ltn "( sport = :$port )" 2>/dev/null | grep -q LISTEN; then
    owned=0
    for f in "$DIR"/run/*.pid; do alive "$f" && owned=1; done
    [[ $owned == 1 ]] || { log "port $port is already in use (set EMROBUST_SLURM_PORT_BASE)"; exit 1; }
  fi
done
# a half-started earlier run, or one started with other options: stop what it left, then start clean
if compgen -G "$DIR/run/*.pid" >/dev/null; then
  log "stopping a partially running cluster first"
  "$(dirname "$0")/stop-local-cluster.sh" >&2 || true
fi

mkdir -p "$DIR"/{etc,run,log,spool/ctld,spool/d,mysql,dev}
HOST=$(hostname -s)
read -r CPUS BOARDS SOCKETS CORES THREADS MEM < <(slurmd -C | head -n1 | tr ' ' '\n' | awk -F= '
  /^CPUs=/{c=$2} /^Boards=/{b=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2}
  /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2} END{print c, b, s, k, t, m}')
DEFMEM=$(( MEM / CPUS < 2048 ? MEM / CPUS : 2048 ))

# ---------------------------------------------------------------- MariaDB on 127.0.0.1 for slurmdbd
DBPASS=emrobust-local
if [[ ! -d "$DIR/mysql/mysql" ]]; then
  mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
fi
mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --bind-address=127.0.0.1 --port=$DB_PORT \
  --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadb.pid" --skip-name-resolve \
  --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --log-error="$DIR/log/mariadb.log" \
  >/dev/null 2>&1 &
for _ in $(seq 1 300); do [[ -S "$DIR/run/mysqld.sock" ]] && [[ -s "$DIR/run/mariadb.pid" ]] && break; sleep 0.1; done
[[ -S "$DIR/run/mysqld.sock" ]] || { log "MariaDB did not start; see $DIR/log/mariadb.log"; exit 1; }
mariadb --no-defaults -uroot --socket="$DIR/run/mysqld.sock" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- munge (optional)
if [[ $MUNGE == 1 ]]; then
  AUTH="AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
CredType=cred/munge
AccountingStoragePass=$DIR/run/munge.socket"
  [[ -s "$DIR/etc/munge.key" ]] || { dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 2>/dev/null; }
  chmod 600 "$DIR/etc/munge.key"
  mkdir -p "$DIR/run/munge"
  munged --force --key-file="$DIR/etc/munge.key" --socket="$DIR/run/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/run/munge.seed"
  DBD_AUTH="AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket"
else
  AUTH="AuthType=auth/none
CredType=cred/none"
  DBD_AUTH="AuthType=auth/none"
fi

# ---------------------------------------------------------------- fake GPUs
GRES_NODE=""; GRES_TYPES=""
rm -f "$DIR/etc/gres.conf"
if [[ $GPUS -gt 0 ]]; then
  GRES_TYPES="GresTypes=gpu"
  GRES_NODE="Gres=gpu:$GPUS"
  : >"$DIR/etc/gres.conf"
  for i in $(seq 0 $((GPUS - 1))); do
    [[ -e "$DIR/dev/nvidia$i" ]] || mknod "$DIR/dev/nvidia$i" c 195 "$i"
    echo "NodeName=$HOST Name=gpu File=$DIR/dev/nvidia$i" >>"$DIR/etc/gres.conf"
  done
  echo "AutoDetect=off" >>"$DIR/etc/gres.conf"
fi

# ---------------------------------------------------------------- configs
cat >"$DIR/etc/slurmdbd.conf" <<EOF
$DBD_AUTH
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/etc/slurmdbd.conf"

cat >"$SLURM_CONF" <<EOF
# written by emrobust slurm/start-local-cluster.sh; a single-node cluster on localhost
ClusterName=emrobust
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
$AUTH
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEFMEM
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
ReturnToService=2
InactiveLimit=0
KillWait=10
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=60
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- daemons
wait_for() {  # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "$what did not come up; logs in $DIR/log"; return 1
}
port_open() { ss -ltn "( sport = :$1 )" | grep -q LISTEN; }

slurmdbd
wait_for slurmdbd 30 port_open $DBD_PORT
slurmctld -i
wait_for slurmctld 30 scontrol ping
slurmd -N "$HOST"
node_idle() { sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated)'; }
wait_for "node $HOST" 30 node_idle
# the cluster registers itself with slurmdbd on slurmctld's first start; sacct works once it has
wait_for "accounting" 30 bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx emrobust"

echo "$OPTIONS" >"$DIR/etc/options"
log "cluster up in $(elapsed)s: $CPUS CPUs, ${MEM} MB, $GPUS fake GPUs, partition debug (state dir $DIR)"
sinfo >&2
echo "export SLURM_CONF=$SLURM_CONF"
