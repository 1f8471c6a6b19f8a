"""Sweep stage-execution ratio on the local Slurm cluster: stage executions / unique stage keys.

    sudo slurm/start-local-cluster.sh && export SLURM_CONF=/tmp/emrobust-slurm/etc/slurm.conf
    python benchmarks/sweep_stages.py [--mode sweep|multirun]
    python benchmarks/sweep_stages.py --smoke    # no cluster: the plan of `emrobust sweep --dry-run`, seconds

Runs the cluster issue's plan, 2 traits x 2 question diversities x 2 EM datasets (8 cells, tiny_random, debug=tiny,
introspection=none), on a fresh artifacts store, either through `emrobust sweep` (shared stages as their own jobs,
cells after them with afterok) or through plain `emrobust -m hydra/launcher=slurm` (cells race for the shared
stages and wait on the store's lock). It then counts, over every run.json the sweep wrote, how many times each
(stage, key) was executed. Side by side: the stage *uses* (what a sweep without a shared store would execute),
the unique keys, the executions, the sbatch submissions and the wall time. Last line: `ratio=<executions / unique
keys>` (1.0 = every stage built exactly once).

`--smoke` (tests/test_benchmarks.py; needs no cluster, no SLURM_CONF): the same grid and job request through
`emrobust sweep --dry-run`, which composes and validates every cell and prints the plan without submitting; the
uses, unique keys and planned executions (the stages each planned job builds) are read from the plan, and the last
line is `ratio=<planned executions / unique keys to build>` (all of them in the fresh store: what the sweep
promises; the real run counts what it did).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["debug=tiny", "introspection=none", "trait=demo,neutral", "question_diversity=low,high",
        "em_dataset=demo_insecure,insecure"]
JOB = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=15",
       "hydra.launcher.max_num_timeout=0"]


def plan_only(tmp: Path, env: dict) -> None:
    """--smoke: the plan of `emrobust sweep --dry-run` for the same grid and request (no cluster needed)."""
    sweep = tmp / "sweep"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "emrobust.cli", "sweep", "--dry-run", *GRID, *JOB,
                        f"hydra.sweep.dir={sweep}"], env=env, cwd=tmp, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"sweep --dry-run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    m = re.search(r"^stages: (\d+) uses of (\d+) unique stage keys, (\d+) cached", p.stdout, re.M)
    jobs = re.search(r"^jobs to submit: (\d+) \((\d+) shared-stage jobs", p.stdout, re.M)
    if not m or not jobs:
        sys.exit(f"no plan in the output of sweep --dry-run:\n{p.stdout[-3000:]}")
    uses, unique, cached = map(int, m.groups())
    # one line per planned job: "  <name> <stage>:<key[:8]> ... [after <jobs>]"
    built = [sk for ln in p.stdout.splitlines() if re.match(r"^  (stages|cell):\d+ ", ln)
             for sk in re.findall(r"\b([a-z_]+):([0-9a-f]{8})\b", ln)]
    planned = collections.Counter(built)
    print(f"mode: sweep --dry-run (plan only)  ({' '.join(GRID)})")
    print(f"jobs to submit: {jobs.group(1)} ({jobs.group(2)} shared-stage jobs)   wall: {wall:.0f} s")
    print(f"stage uses (no shared store would execute these): {uses}")
    print(f"unique stage keys: {unique}   cached: {cached}")
    print(f"planned stage executions: {len(built)}   (max per key: {max(planned.values())})")
    print(f"ratio={len(built) / (unique - cached):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["sweep", "multirun"], default="sweep")
    ap.add_argument("--smoke", action="store_true",
                    help="no cluster: the plan of `emrobust sweep --dry-run` for the same grid (seconds)")
    a = ap.parse_args()
    if a.smoke:
        if a.mode != "sweep":
            sys.exit("--smoke plans through emrobust sweep --dry-run: --mode sweep only")
        tmp = Path(tempfile.mkdtemp(prefix="emrobust-sweep-bench-"))
        plan_only(tmp, {**os.environ, "EMROBUST_ROOT": str(tmp), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
        return
    if "SLURM_CONF" not in os.environ:
        sys.exit("start the local cluster first (slurm/start-local-cluster.sh) and export SLURM_CONF")
    tmp = Path(tempfile.mkdtemp(prefix="emrobust-sweep-bench-"))
    sweep = tmp / "sweep"
    env = {**os.environ, "EMROBUST_ROOT": str(tmp), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "emrobust.cli"] + (["sweep"] if a.mode == "sweep" else ["-m"])
    t0 = time.time()
    p = subprocess.run([*cmd, *GRID, *JOB, f"hydra.sweep.dir={sweep}"], env=env, cwd=tmp, capture_output=True,
                       text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"sweep failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    runs = [json.loads(r.read_text()) for r in [*sweep.glob("*/run.json"), *sweep.glob(".stages/*/run.json")]]
    cells = [json.loads(r.read_text()) for r in sweep.glob("*/run.json")]
    uses = sum(s["status"] != "skipped" for r in cells for s in r["stages"])
    # a node is a use of a stage (sample@start is a sample): the store's identity is (stage, key)
    unique = {(s["name"].split("@")[0], s["key"]) for r in cells for s in r["stages"] if s["status"] != "skipped"}
    executed = collections.Counter((s["name"].split("@")[0], s["key"]) for r in runs for s in r["stages"]
                                   if s["status"] == "executed")
    n_exec = sum(executed.values())
    jobs = len({d.name.split("_")[0] for d in (sweep / ".submitit").iterdir() if d.is_dir()})
    print(f"mode: {a.mode}  ({' '.join(GRID)})")
    print(f"cells: {len(cells)}   sbatch submissions (job folders): {jobs}   wall: {wall:.0f} s")
    print(f"stage uses (no shared store would execute these): {uses}")
    print(f"unique stage keys: {len(unique)}")
    print(f"stage executions: {n_exec}   (max per key: {max(executed.values())})")
    print(f"uses / executions: {uses / n_exec:.2f}")
    print(f"ratio={n_exec / len(unique):.2f}")


if __name__ == "__main__":
    main()
