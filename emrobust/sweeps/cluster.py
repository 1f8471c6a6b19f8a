"""The one place that talks to Slurm (through submitit): the executor both submission paths submit with (`emrobust
sweep` and the `-m hydra/launcher=slurm` launcher, both in emrobust.sweeps.sweep), the one wait loop (`collect`), the job
callable, and `sacct`.

Failures are failures. Hydra's `run_job` catches a cell's exception and returns it inside a `JobReturn`, so the
stock submitit job exits 0 and Slurm records a cell that raised as COMPLETED (hydra issue #1928). Here the job
still returns that `JobReturn` to the login node (submitit pickles it as usual, so the sweep keeps going and
Hydra raises at the end, exactly as with the local launcher), and then its process exits 1, so `sacct` says
FAILED and `afterok` dependencies do not fire. A cell whose job Slurm killed (time limit, OOM, scancel) wrote no
`run.json`: the login node marks it `failed` in `sweep.csv` with Slurm's final state.

Requeue: on preemption or timeout submitit gets USR2 and requeues the job (`max_num_timeout`); the rerun finds
every finished stage cached and the interrupted training stage's checkpoints in the store (see
`emrobust.core.store.Store.checkpoint_dir`), and resumes from the newest complete one.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import submitit
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

from ..core.compose import choices as recorded
from ..core.compose import compose
from ..errors import ConfigError

log = logging.getLogger(__name__)

# hydra.launcher keys that are not sbatch parameters
_INIT_KEYS = {"submitit_folder", "max_num_timeout", "_target_"}


def executor(params: dict, folder: str | os.PathLike):
    """A submitit Slurm executor from `hydra.launcher` params (conf/hydra/launcher/slurm.yaml), mapped exactly as
    hydra-submitit-launcher maps them (common keys as is, the rest `slurm_<key>`)."""
    ex = submitit.AutoExecutor(cluster="slurm", folder=str(folder),
                               slurm_max_num_timeout=params.get("max_num_timeout", 0))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in _INIT_KEYS})
    if (params.get("tasks_per_node") or 1) * (params.get("nodes") or 1) > 1:
        # a rank that dies takes the others with it (with NCCL they would wait in a collective until the process
        # group's timeout); hydra-submitit-launcher's config has no srun_args key, so it is set here
        ex.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
    return ex


def exit_failed() -> None:
    """Registered last, so it runs first at interpreter exit: after submitit has written the result pickle."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def sacct_state(job_id: str) -> str:
    """Slurm's state of one job (array task ids like 12_3 work), '' when sacct does not know it."""
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "JobID,State"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid == str(job_id):
            return state.split()[0] if state else ""
    return ""


def job_states(ids: Sequence[str]) -> dict[str, dict]:
    """Slurm's view of these jobs: {job id: {state, reason, elapsed}}, from squeue (pending and running jobs,
    with the reason a pending job waits) and sacct (finished ones); empty when Slurm is not reachable."""
    ids = [str(i) for i in ids if i]
    if not ids:
        return {}
    out: dict[str, dict] = {}
    acct = _slurm("sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,State,Reason,Elapsed") or ""
    for line in acct.splitlines():
        jid, state, reason, elapsed = (line.split("|") + ["", "", ""])[:4]
        out[jid] = {"state": state.split()[0] if state else "", "reason": reason, "elapsed": elapsed}
    queue = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r|%M") or ""
    for line in queue.splitlines():
        jid, state, reason, elapsed = (line.split("|") + ["", "", ""])[:4]
        out[jid] = {"state": state, "reason": reason, "elapsed": elapsed}
    return out


def job_failure(job) -> str:
    """Why a submitit job produced no result, for sweep.csv."""
    state = sacct_state(job.job_id) or job.state
    return f"Slurm job {job.job_id} ended {state} without a result (killed, timed out or cancelled)"


# ---------------------------------------------------------------- what the partition offers vs the request
def _slurm(*args: str) -> str | None:
    """stdout of a Slurm command, or None when Slurm is not reachable from here (not installed, no controller, or
    $SLURM_CONF naming a file that does not exist: the command would spend its 30 s looking for a controller)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.exists(conf):
        return None
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def _minutes(limit: str) -> float | None:
    """Slurm's time limit ("infinite", "30", "2:00:00", "1-12:00:00") in minutes; None = no limit."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    h, m, sec = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + sec / 60


def _gpus(gres: str) -> int:
    """GPUs in a gres string ("gpu:2", "gpu:a100:4(S:0-1),shard:8", "(null)")."""
    n = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu":
            n += int(fields[-1]) if fields[-1].isdigit() else 1
    return n


def request(params: dict) -> dict:
    """What one job of these launcher params asks of one node: cpus, mem_mb, gpus, minutes, nodes, partition."""
    tasks = params.get("tasks_per_node") or 1
    cpus = (params.get("cpus_per_task") or 1) * tasks
    gpus = params.get("gpus_per_node") or (params.get("gpus_per_task") or 0) * tasks or (
        _gpus(params["gres"]) if params.get("gres") else 0)
    if params.get("mem_gb"):
        mem = params["mem_gb"] * 1024
    elif params.get("mem_per_cpu"):
        mem = _mb(params["mem_per_cpu"]) * cpus
    else:
        mem = 0
    return {"cpus": cpus, "mem_mb": mem, "gpus": gpus, "minutes": params.get("timeout_min"),
            "nodes": params.get("nodes") or 1, "partition": params.get("partition")}


def _mb(mem: str | int) -> float:
    s = str(mem).strip().upper().removesuffix("B")
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}.get(s[-1:], None)
    return float(s[:-1]) * scale if scale else float(s)


def check_request(params: dict) -> str:
    """Check a job's request (CPUs, memory, GPUs, time limit, partition, nodes) against what the partition's
    nodes offer (sinfo); ConfigError naming the hydra.launcher field when no node could ever run it (the job
    would pend forever). Returns a line saying what was checked, or that no Slurm is reachable from here."""
    req = request(params)
    want = (f"{req['cpus']} CPU, {req['mem_mb'] / 1024:g} GB, {req['gpus']} GPU, "
            f"{req['minutes'] if req['minutes'] is not None else 'no'} min, {req['nodes']} node(s)")
    parts = _slurm("sinfo", "-h", "-o", "%P|%l|%a")
    if parts is None:
        return f"Slurm: not reachable from here (sinfo failed or is not installed): the request ({want}) was not checked"
    partitions = {p.split("|")[0].rstrip("*"): p.split("|") for p in parts.split()}
    default = next((p.split("|")[0].rstrip("*") for p in parts.split() if p.split("|")[0].endswith("*")), None)
    name = req["partition"] or default
    if name is None:
        raise ConfigError(f"no partition given and the cluster has no default one; partitions: {sorted(partitions)}",
                          where="hydra.launcher.partition")
    if name not in partitions:
        raise ConfigError(f"partition {name!r} does not exist; partitions: {', '.join(sorted(partitions))}",
                          where="hydra.launcher.partition")
    limit = _minutes(partitions[name][1])
    nodes = [ln.split("|") for ln in (_slurm("sinfo", "-h", "-N", "-p", name, "-o", "%N|%c|%m|%G") or "").split()]
    nodes = {n[0]: (int(n[1]), int(n[2]), _gpus(n[3])) for n in nodes if len(n) == 4}
    if not nodes:
        raise ConfigError(f"partition {name!r} has no nodes", where="hydra.launcher.partition")
    cpus, mem, gpus = (max(v[i] for v in nodes.values()) for i in range(3))
    where = f"partition {name} ({len(nodes)} node(s))"
    tasks = max(1, params.get("tasks_per_node") or 1)
    problems = []  # (field, what, hint): every dimension no node of the partition offers
    if req["cpus"] > cpus:
        problems.append(("cpus_per_task", f"{req['cpus']} CPUs per node (cpus_per_task x tasks_per_node) > {cpus}, "
                         "the most a node has", f"cpus_per_task={max(1, cpus // tasks)}"))
    if req["mem_mb"] > mem:
        problems.append(("mem_gb", f"mem_gb={req['mem_mb'] / 1024:g} > {mem / 1024:.1f} GB ({mem} MB), the most a "
                         "node has", f"mem_gb={int(mem // 1024)}"))
    if req["gpus"] > gpus:
        problems.append(("gpus_per_node", f"{req['gpus']} GPU(s) per node > {gpus}, the most a node has",
                         f"gpus_per_node={gpus or 'null'}"))
    if limit is not None and req["minutes"] is not None and req["minutes"] > limit:
        problems.append(("timeout_min", f"timeout_min={req['minutes']} > {limit:g} min, the partition's time limit",
                         f"timeout_min={int(limit)}"))
    if problems:
        field = f"hydra.launcher.{problems[0][0]}" if len(problems) == 1 else "hydra.launcher"
        raise ConfigError(f"no node of {where} can run this job, it would pend forever: "
                          + "; ".join(p[1] for p in problems), where=field,
                          hint=" ".join(f"hydra.launcher.{p[2]}" for p in problems))
    fit = [n for n, (c, m, g) in nodes.items() if c >= req["cpus"] and m >= req["mem_mb"] and g >= req["gpus"]]
    if len(fit) < req["nodes"]:
        raise ConfigError(f"{req['nodes']} node(s) each with {want.rsplit(',', 2)[0]} but {len(fit)} node(s) of "
                          f"{where} offer that together; the job would pend forever", where="hydra.launcher.nodes")
    return (f"Slurm: the request ({want}) fits {len(fit)} node(s) of partition {name} (at most {cpus} CPU, "
            f"{mem / 1024:.1f} GB, {gpus} GPU; time limit {partitions[name][1]})")


def collect(jobs: Sequence[tuple[Any, Path | None, list[str]]], sweep_dir: Path) -> list[tuple[Any, str | None]]:
    """Wait for every submitted job `(submitit job, the cell's output dir or None, its overrides)`, in order: (its
    first task's result, None), or (None, why) for a job that raised, was killed, or lost a dependency. A cell
    whose job died before finishing its run.json is recorded failed with Slurm's reason; sweep.csv is written at
    the end. One loop for both submission paths (the `-m` launcher and `emrobust sweep`)."""
    from ..core import results  # lazy: torch-free verbs

    out: list[tuple[Any, str | None]] = []
    for job, output_dir, overrides in jobs:
        try:
            out.append((job.results()[0], None))
        except Exception as e:  # noqa: BLE001 - the job raised, was killed, or a dependency failed
            why = job_failure(job)
            if output_dir is not None:
                log.error("cell %s: %s (%s)", Path(output_dir).name, why, type(e).__name__)
                results.record_failure(Path(output_dir), list(overrides), why)
            out.append((None, why))
    results.write_sweep_csv(sweep_dir)
    return out


# ---------------------------------------------------------------- `emrobust sweep` jobs
class CellJob:
    """One Slurm job of `emrobust sweep`: one cell (or its stages up to `until`), composed from overrides in the
    job. Checkpointable: on USR2 (preemption, time limit) submitit requeues it with the same arguments."""

    def __init__(self, overrides: list[str], output_dir: str, until: str | None = None,
                 sweep_dir: str | None = None, group: str | None = None):
        self.overrides, self.output_dir, self.until = list(overrides), output_dir, until
        self.sweep_dir, self.group = sweep_dir, group

    def __call__(self) -> str:
        from ..engine import pipeline  # lazy: torch-free verbs

        extra = [f"pipeline.until={self.until}"] if self.until else []
        cfg = compose(self.overrides + extra, hydra=True)
        choices = recorded(cfg.hydra.runtime.choices)  # as -m records them
        with open_dict(cfg):
            del cfg["hydra"]
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        sweep = Path(self.sweep_dir) if self.sweep_dir else None
        return pipeline.run_job(cfg, Path(self.output_dir), self.overrides, choices, self.group, sweep)["status"]

    def checkpoint(self, *args: Any, **kwargs: Any):
        log.warning("preempted or timed out: requeueing; finished stages are cached, training resumes from its "
                    "last checkpoint")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit(ex, job: CellJob, name: str, after: Sequence[str] = (), additional: dict | None = None):
    """One sbatch: `job` named `name`, started only after every job in `after` completed OK (a failed
    dependency cancels it: --kill-on-invalid-dep)."""
    extra = dict(additional or {}) | {"kill-on-invalid-dep": "yes"}
    if after:
        extra["dependency"] = "afterok:" + ":".join(str(a) for a in after)
    ex.update_parameters(name=name, slurm_additional_parameters=extra)
    return ex.submit(job)
