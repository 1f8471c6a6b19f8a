"""`emrobust status <sweep dir> [--watch]`: one line per cell (and per shared-stage job of `emrobust sweep`).

    pending   Slurm's reason it waits (Resources, Priority, Dependency, PartitionConfig, ...)
    running   the node it is in (building it, or waiting for another job that builds the same key) and for how long
    done      stages executed/cached, seconds
    failed    the reason (the error, the node it happened in, or Slurm's final state) and the log to read

From Slurm (squeue, sacct: `emrobust.sweeps.cluster.job_states`), each cell's run.json (written as the cell starts and
before each node) and the artifact store (a node's partial build dir). Which Slurm job runs which cell: plan.json
(`emrobust sweep`) or slurm_jobs.json (`-m hydra/launcher=slurm`). A local multirun has no Slurm: a cell whose
process is gone while its run.json still says running was killed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from ..errors import ConfigError
from . import cluster

TERMINAL = {"done", "failed"}
SLURM_DONE = {"COMPLETED"}
SLURM_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def jobs(sweep: Path) -> list[tuple[str, Path, str | None]]:
    """(name, output dir, Slurm job id or None) of every cell and shared-stage job of a sweep dir."""
    plan, ids = sweep / "plan.json", sweep / "slurm_jobs.json"
    if plan.exists():  # emrobust sweep
        out = []
        for j in json.loads(plan.read_text())["jobs"]:
            kind, n = j["name"].split(":")
            out.append((j["name"], sweep / n if kind == "cell" else sweep / ".stages" / n, j["slurm_id"]))
        return out
    by_cell: dict[str, str] = {}
    if ids.exists():  # -m hydra/launcher=slurm
        by_cell = json.loads(ids.read_text())
    elif (sweep / ".submitit").is_dir():  # an older -m sweep: the array task folders name the cells
        for d in sorted((sweep / ".submitit").iterdir(), key=lambda p: p.name):
            if d.is_dir() and "_" in d.name:
                by_cell[d.name.split("_", 1)[1]] = d.name
    cells = set(by_cell) | {d.name for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()}
    return [(f"cell:{c}", sweep / c, by_cell.get(c)) for c in sorted(cells, key=int)]


def _log(sweep: Path, out: Path, job_id: str | None) -> str | None:
    """The log to read for a job: submitit's stderr file, else the cell's Hydra log."""
    if job_id:
        d = sweep / ".submitit" / job_id
        for name in (f"{job_id}_0_log.err", f"{job_id}_0_log.out"):
            if (d / name).exists():
                return str(d / name)
    logs = sorted(out.glob("*.log"))
    return str(logs[0]) if logs else None


def _building(run: dict) -> str:
    """What the store says of the node a running cell is in: its build dir, or another job building it."""
    cur, root = run.get("current") or {}, run.get("artifacts")
    if not cur or not root or cur.get("node") == "base":
        return ""
    stage = cur["node"].split("@")[0]
    final = Path(root) / stage / cur["key"]
    if (final / "COMPLETE").exists():
        return ", just built"
    if (final.parent / f".{cur['key']}.partial").exists():
        return ", building"
    return ", waiting for the job that builds it"


def line(sweep: Path, name: str, out: Path, job_id: str | None, slurm: dict) -> tuple[str, str]:
    """(state, detail) of one job."""
    rj = out / "run.json"
    run = json.loads(rj.read_text()) if rj.exists() else None
    sj = slurm.get(job_id or "", {})
    sstate = sj.get("state", "")
    tag = f"Slurm job {job_id} {sstate}".rstrip() if job_id else ""
    if run is not None and run.get("status") == "ok":
        n_ex = sum(s["status"] == "executed" for s in run["stages"])
        n_ca = sum(s["status"] == "cached" for s in run["stages"])
        return "done", f"{n_ex} stages executed, {n_ca} cached, {run.get('seconds', 0):.0f}s"
    if run is not None and run.get("status") == "failed":
        where = f"stage {run['failed_stage']}: " if run.get("failed_stage") else ""
        return "failed", f"{where}{(run.get('error') or '')[:300]}; log: {_log(sweep, out, job_id) or rj}"
    if job_id and sstate and sstate not in SLURM_ACTIVE and sstate not in SLURM_DONE:
        return "failed", f"{tag} ({sj.get('elapsed', '')}) without finishing; log: {_log(sweep, out, job_id)}"
    if run is not None and run.get("status") == "running":
        if not job_id and run.get("host") == socket.gethostname() and not _alive(run.get("pid")):
            return "failed", f"killed: process {run.get('pid')} is gone (run.json still said running)"
        cur = run.get("current") or {}
        node = cur.get("node", "?")
        since = time.time() - cur.get("started", run.get("started", time.time()))
        total = time.time() - run.get("started", time.time())
        return "running", (f"stage {node} for {_hms(since)}{_building(run)}, elapsed {_hms(total)}"
                           + (f"; {tag}" if tag else ""))
    if sstate == "PENDING":
        return "pending", f"{tag} ({sj.get('reason') or 'no reason given'})"
    if sstate in SLURM_ACTIVE:
        return "running", f"{tag} {sj.get('elapsed', '')}, no run.json yet (starting)"
    if job_id and not slurm:
        return "unknown", f"Slurm job {job_id}: Slurm not reachable from here, no run.json yet"
    return "pending", tag or "not started"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def table(sweep: Path) -> tuple[list[tuple[str, str, str]], bool]:
    """[(name, state, detail)] for every job of the sweep, and whether all of them are done or failed."""
    js = jobs(sweep)
    slurm = cluster.job_states([j for _, _, j in js if j])
    rows = [(name, *line(sweep, name, out, job_id, slurm)) for name, out, job_id in js]
    return rows, all(state in TERMINAL for _, state, _ in rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="emrobust status", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--watch", action="store_true", help="print again every --interval seconds until all have ended")
    ap.add_argument("--interval", type=float, default=10.0)
    args = ap.parse_args(argv)
    sweep = args.sweep_dir
    if not sweep.is_dir():
        raise ConfigError("not a directory", file=str(sweep))
    if not jobs(sweep):
        raise ConfigError("no cells: neither plan.json, slurm_jobs.json nor cell dirs", file=str(sweep))
    while True:
        rows, finished = table(sweep)
        counts = {s: sum(r[1] == s for r in rows) for s in ("pending", "running", "done", "failed", "unknown")}
        print(f"{sweep} at {time.strftime('%H:%M:%S')}: "
              + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        width = max(len(r[0]) for r in rows)
        for name, state, detail in rows:
            print(f"  {name:<{width}}  {state:<8} {detail}")
        if not args.watch or finished:
            return 0
        time.sleep(args.interval)
