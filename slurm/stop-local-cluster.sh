#!/usr/bin/env bash
# Stop the daemons slurm/start-local-cluster.sh started, by their pid files (nothing else is touched).
#   slurm/stop-local-cluster.sh            # keep the state dir (accounting DB, logs) for the next start
#   slurm/stop-local-cluster.sh --purge    # and delete the state dir
set -uo pipefail
DIR="${EMROBUST_SLURM_DIR:-/tmp/emrobust-slurm}"
PURGE=0
[[ "${1:-}" == "--purge" ]] && PURGE=1

stop() {  # stop <name>: TERM the pid in run/<name>.pid, wait up to 30 s, then KILL
  local f="$DIR/run/$1.pid" pid
  [[ -s "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "[stop-local-cluster] stopped $1 ($pid)"
  fi
  rm -f "$f"
}
# the node first (it ends its running jobs), then the controller, accounting, the database, munge
for d in slurmd slurmctld slurmdbd mariadb munged; do stop "$d"; done
if [[ $PURGE == 1 ]]; then rm -rf "$DIR"; echo "[stop-local-cluster] removed $DIR"; fi
exit 0
