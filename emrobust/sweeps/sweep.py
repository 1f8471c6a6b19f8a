"""`emrobust sweep <overrides...> [--dry-run] [--no-wait]`: a multirun planned on the login node.

1. Expand the multirun exactly as `-m` would (Hydra's basic sweeper: command-line sweeps × the experiment's
   `hydra.sweeper.params`).
2. Check the job request against what the partition's nodes offer (emrobust.sweeps.cluster.check_request), compose and
   validate every cell (emrobust.engine.validation: ranges, rules, files, counts against the data; the GPU request vs
   model size, no secrets in `setup` lines); the first problem stops the sweep, naming the cell and the field.
   What the user meets without changing the config (data still to fetch, user-supplied data, API keys,
   packages: errors.Unmet) is collected instead, as gates (emrobust.sweeps.preflight). Nothing has been submitted yet
   (`--dry-run` still prints the plan when the request is what is refused).
3. A real submission refuses while a gate other than data-to-fetch fails, then fetches every hub model (at its
   pinned revision) and every registry file the cells read into the shared caches, and validates every cell
   again on the fetched data. `--dry-run` fetches nothing: files are keyed by their pinned hashes
   (emrobust.data.registry.content_id), user-supplied data not given yet by a provisional key.
4. Compute every cell's stage keys and look them up in the store: a stage needed by several cells and not yet
   built is a *shared* stage. Consecutive shared stages needed by the same cells (a persona's questions →
   distill → introspect → fold, and its evaluation before EM) form one job: it runs a representative cell with
   `pipeline.until=<its last node>` (that node and what it needs).
5. Print the plan (cells, unique stages, cached stages, jobs, GPU-hour bound), what the cells need and where it
   is, the judge's API cost, each contrast's minimum detectable difference (emrobust.sweeps.preflight) and every gate
   (judge calibration, Slurm request, data, keys, packages, GPUs); `--dry-run` exits 0 there. Then submit the
   shared-stage jobs and the cells with `afterok` dependencies through `emrobust.sweeps.cluster`, so each missing shared
   stage is built exactly once, and every cell job finds it cached.

`-m hydra/launcher=slurm` (the `SlurmLauncher` below) is the other way to submit a sweep: one array job of cells,
without the shared-stage jobs. It passes the same login-node checks (`check`, `refuse`) and waits in the same loop
(`cluster.collect`).
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf

from ..core.compose import compose
from ..core.store import Store
from ..data import registry
from ..errors import ConfigError, Unmet
from . import cluster
from .callbacks import sweep_end
from .checks import check_launcher, judge_gate, load_cells, validate_cell

log = logging.getLogger("emrobust.sweeps.sweep")


def expand(argv: list[str]) -> tuple[list[list[str]], list[str], DictConfig]:
    """(cells' overrides, the hydra/launcher overrides, the composed hydra config) of a multirun command line."""
    launcher = [a for a in argv if a.startswith(("hydra.", "hydra/", "+local=", "local="))]
    task = [a for a in argv if a not in launcher]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(task)
    # the primary config (first value of each sweep) tells us the experiment's sweeper params and the launcher
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    primary = compose(first + launcher, hydra=True)
    params = primary.hydra.sweeper.get("params") or {}
    given = {o.get_key_element() for o in parsed}
    extra = [f"{k}={v}" for k, v in params.items() if k not in given]
    cells = BasicSweeper.split_arguments(parser.parse_overrides(task + extra), None)[0]
    return [list(c) for c in cells], launcher, primary


@dataclass
class Job:
    name: str  # e.g. "fold:1a2b..." or "cell:3"
    overrides: list[str]
    output_dir: Path
    until: str | None = None
    after: list[str] = field(default_factory=list)  # names of jobs this one waits for
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, key) it builds
    is_cell: bool = False
    slurm_id: str | None = None
    handle: object = field(default=None, repr=False)  # the submitit Job once submitted


@dataclass
class Plan:
    sweep_dir: Path
    cells: list[list[str]]
    keys: list[list[tuple[str, str]]]  # per cell: (stage, key) in order
    cached: set[tuple[str, str]]
    jobs: list[Job]

    @property
    def unique(self) -> set[tuple[str, str]]:
        return {sk for ks in self.keys for sk in ks}

    def summary(self, launcher: dict) -> str:
        shared = [j for j in self.jobs if not j.is_cell]
        n_jobs = len(self.jobs)
        gpus = (launcher.get("gpus_per_node") or 0) * (launcher.get("nodes") or 1)
        hours = n_jobs * gpus * (launcher.get("timeout_min") or 0) / 60
        uses = sum(len(k) for k in self.keys)
        lines = [f"sweep dir: {self.sweep_dir}",
                 f"cells: {len(self.cells)}",
                 f"stages: {uses} uses of {len(self.unique)} unique stage keys, {len(self.cached)} cached, "
                 f"{len(self.unique) - len(self.cached)} to build",
                 f"jobs to submit: {n_jobs} ({len(shared)} shared-stage jobs + {n_jobs - len(shared)} cell jobs)",
                 f"GPU-hours requested (upper bound = jobs x {gpus} GPU x {launcher.get('timeout_min')} min): "
                 f"{hours:.1f}"]
        for j in self.jobs:
            what = " ".join(f"{s}:{k[:8]}" for s, k in j.stages) or "all cached"
            dep = f"  after {','.join(j.after)}" if j.after else ""
            lines.append(f"  {j.name:<18} {what}{dep}")
        return "\n".join(lines)


def make_plan(cells: list[list[str]], cfgs: list[DictConfig], sweep_dir: Path) -> Plan:
    from ..engine import pipeline  # lazy: torch-free verbs

    nodes = [[n for n in pipeline.plan(c) if n.stage != "base"] for c in cfgs]
    keys = [[(n.stage, n.key) for n in ns] for ns in nodes]
    store = Store(Path(cfgs[0].paths.artifacts))
    users: dict[tuple[str, str], list[int]] = {}
    for i, ks in enumerate(keys):
        for sk in ks:
            users.setdefault(sk, []).append(i)
    cached = {sk for sk in users if store.is_complete(*sk)}
    jobs: list[Job] = []
    built_by: dict[tuple[str, str], Job] = {}  # (stage, key) -> the shared-stage job that builds it
    for i, ks in enumerate(keys):
        node_id = {(n.stage, n.key): n.id for n in nodes[i]}  # a shared job runs until its last node of this cell
        prev: Job | None = None
        for sk in ks:
            if sk in cached or len(users[sk]) < 2:
                continue
            if sk in built_by:  # an earlier cell's chain builds it
                prev = built_by[sk]
                continue
            if prev is not None and prev.overrides is cells[i] and users[prev.stages[-1]] == users[sk]:
                prev.stages.append(sk)  # needed by the same cells as the stage before: the same job
                prev.until = node_id[sk]
            else:
                n = sum(not j.is_cell for j in jobs)
                prev = Job(f"stages:{n}", cells[i], sweep_dir / ".stages" / str(n), node_id[sk],
                           after=[prev.name] if prev else [], stages=[sk])
                jobs.append(prev)
            built_by[sk] = prev
        deps = sorted({built_by[sk].name for sk in ks if sk in built_by}, key=lambda n: int(n.split(":")[1]))
        own = [sk for sk in ks if sk not in cached and sk not in built_by]
        jobs.append(Job(f"cell:{i}", cells[i], sweep_dir / str(i), None, deps, own, is_cell=True))
    return Plan(sweep_dir, cells, keys, cached, jobs)


def submit(plan: Plan, launcher: dict) -> dict[str, str]:
    """sbatch every job of the plan in order (dependencies first); returns job name -> Slurm job id."""
    ex = cluster.executor(launcher, plan.sweep_dir / ".submitit" / "%j")
    extra = dict(launcher.get("additional_parameters") or {})
    ids: dict[str, str] = {}
    group = plan.sweep_dir.name
    for j in plan.jobs:
        job = cluster.CellJob(j.overrides, str(j.output_dir), j.until,
                              str(plan.sweep_dir) if j.is_cell else None, group)
        name = f"{launcher.get('name') or 'emrobust'}-{group}-{j.name.replace(':', '-')}"
        sj = cluster.submit(ex, job, name, [ids[a] for a in j.after], extra)
        ids[j.name] = j.slurm_id = str(sj.job_id)
        j.handle = sj
        log.info("submitted %s as Slurm job %s%s", j.name, sj.job_id, f" after {j.after}" if j.after else "")
    return ids


def wait(plan: Plan) -> list[str]:
    """Wait for every job (cluster.collect: a cell whose job died without run.json is recorded failed, sweep.csv
    written). Returns the failed cells."""
    done = cluster.collect([(j.handle, j.output_dir if j.is_cell else None, j.overrides) for j in plan.jobs],
                           plan.sweep_dir)
    return [j.name for j, (_, why) in zip(plan.jobs, done) if j.is_cell and why is not None]


def prepare(cells: list[list[str]], launcher: dict, dry_run: bool, cfgs: list[DictConfig] | None = None,
            start: int = 0):
    """Compose (unless `cfgs` are given, as the `-m` launcher composes them) and validate every cell (data not here
    yet, keys and packages collected, errors.Unmet), the gates of what they need (preflight), and, for a real
    submission, every model and dataset fetched into the shared caches, then every cell validated again on the
    fetched data. Cells are numbered from `start`. Returns (cfgs, needs, gates)."""
    from . import preflight  # lazy: torch-free verbs

    given, cfgs, unmet = cfgs, [], []
    with registry.no_fetch():
        for i, c in enumerate(cells, start=start):
            cfg = compose(c) if given is None else given[i - start]
            validate_cell(i, c, cfg, launcher, unmet)
            cfgs.append(cfg)
    needs = preflight.needs(cfgs)
    gates = [*preflight.unmet_gates(unmet), preflight.gpu_gate(cfgs, launcher)]
    if dry_run:
        return cfgs, needs, gates
    blocked = [g for g in gates if not g.ok]
    if blocked:
        raise ConfigError("; ".join(f"{g.name}: {g.line}" for g in blocked), where="sweep gates")
    for line in preflight.fetch(needs):
        log.info("fetched%s", line)
    for i, (c, cfg) in enumerate(zip(cells, cfgs), start=start):
        validate_cell(i, c, cfg, launcher)  # on the fetched data: counts, leakage
    return cfgs, needs, gates


@dataclass
class Checked:
    """What the login-node checks found: the composed cells, what they need, and every gate (judge, Slurm, data,
    keys, packages, GPUs), each a preflight.Gate."""
    cfgs: list[DictConfig]
    needs: object
    gates: list


def check(cells: list[list[str]], launcher: dict, dry_run: bool, cfgs: list[DictConfig] | None = None,
          start: int = 0) -> Checked:
    """The login-node checks of a Slurm sweep, one path for `emrobust sweep` and the `-m hydra/launcher=slurm`
    launcher: no secret in the job script, the request against the partition (a dry-run reports a refusal as the
    Slurm gate instead of stopping), every cell validated (`prepare`), and the judge gates. A problem that a
    config change fixes raises ConfigError naming the cell and field; `refuse` then stops on a failed gate."""
    from .preflight import Gate  # lazy: torch-free verbs

    check_launcher(launcher)
    try:
        slurm = Gate("slurm", True, cluster.check_request(launcher))
    except ConfigError as e:
        if not dry_run:
            raise
        slurm = Gate("slurm", False, str(e) + (f" (hint: {e.hint})" if e.hint else ""))
    cfgs, needs, study = prepare(cells, launcher, dry_run, cfgs, start)
    judge = [Gate("judge", ok, line) for line, ok in judge_gates(cfgs).items()]
    return Checked(cfgs, needs, [*judge, slurm, *study])


def refuse(gates: list) -> None:
    """ConfigError when a judge gate failed (the others stop `check` itself on a real submission)."""
    failed = [g for g in gates if g.name == "judge" and not g.ok]
    if failed:
        raise ConfigError(f"a judge is below the bar: {failed[0].line}", where="judge",
                          hint="calibrate it (emrobust judge calibrate) or set judge.allow_untrusted=true; "
                               "nothing was submitted")


def judge_gates(cfgs: list[DictConfig]) -> dict[str, bool]:
    """One line per distinct judge gate (checks.judge_gate); a gate whose eval set is not here yet says so."""
    gates: dict[str, bool] = {}
    for cfg in cfgs:
        try:
            with registry.no_fetch():
                ok, line = judge_gate(cfg)
        except Unmet as e:
            ok, line = False, f"judge {cfg.judge.name}: its calibration is looked up with the eval set's judge " \
                              f"prompts, not here yet ({e.what}): decided once it is fetched"
        gates.setdefault(line, ok)
    return gates


def study_report(plan: Plan, cells: list[list[str]], cfgs: list[DictConfig], needs, primary) -> str:
    """What the sweep needs and would cost, and what it can detect (emrobust.sweeps.preflight)."""
    from . import preflight  # lazy: torch-free verbs

    planning = OmegaConf.select(primary, "planning") or cfgs[0].planning
    experiment = OmegaConf.select(primary, "hydra.runtime.choices.experiment")
    lines = ["models and data:", *(preflight.status_lines(needs) or ["  none to fetch"])]
    lines += preflight.cost_lines(preflight.judge_cost(plan, cfgs, planning))
    lines += preflight.power(cells, cfgs, experiment, planning)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="emrobust sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--no-wait", action="store_true", help="return once everything is submitted")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, sweeps as a,b,c (hydra/launcher=slurm ...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cells, _, primary = expand(args.overrides)
        launcher = OmegaConf.to_container(primary.hydra.launcher, resolve=True)
        if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            raise ConfigError("emrobust sweep submits to Slurm: add hydra/launcher=slurm (or slurm_multigpu)",
                              where="hydra/launcher")
        sweep_dir = Path(str(primary.hydra.sweep.dir)).resolve()
        # the store and cache as the login node sees them: the jobs must use the very same paths
        pin = [f"paths.artifacts={Path(primary.paths.artifacts).resolve()}",
               f"paths.cache={Path(primary.paths.cache).resolve()}"]
        cells = [c + [p for p in pin if p.split("=")[0] not in {o.split("=")[0] for o in c}] for c in cells]
        checked = check(cells, launcher, args.dry_run)
    except ConfigError as e:  # reported by the CLI: one line, exit 2
        e.hint = f"{e.hint}; nothing was submitted" if e.hint else "nothing was submitted"
        raise

    cfgs = checked.cfgs
    with registry.no_fetch(provisional=args.dry_run):  # keys of data not here yet: their pinned hashes
        plan = make_plan(cells, cfgs, sweep_dir)
    print(plan.summary(launcher))
    print(study_report(plan, cells, cfgs, checked.needs, primary))
    # the gates: every one is reported; --dry-run exits 0 with them, a real submission refuses until each passes
    for g in checked.gates:
        print(g.text)
    if args.dry_run:
        return 0
    refuse(checked.gates)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ids = submit(plan, launcher)
    (sweep_dir / "plan.json").write_text(json.dumps(
        {"cells": plan.cells, "jobs": [{"name": j.name, "slurm_id": j.slurm_id, "after": j.after, "until": j.until,
                                        "stages": j.stages, "overrides": j.overrides} for j in plan.jobs],
         "unique_stages": len(plan.unique), "cached_stages": len(plan.cached)}, indent=1))
    print(f"submitted {len(ids)} jobs ({sweep_dir / 'plan.json'})")
    if args.no_wait:
        return 0
    failed = wait(plan)
    import pandas as pd  # lazy: torch-free verbs

    sweep_end(sweep_dir, primary.tracking)

    df = pd.read_csv(sweep_dir / "sweep.csv")
    print(f"sweep finished in {time.time() - t0:.0f}s: {(df['status'] == 'ok').sum()} cells ok, "
          f"{(df['status'] != 'ok').sum()} failed ({len(failed)} of them killed or never started); "
          f"{sweep_dir / 'sweep.csv'}")
    print(df[[c for c in ("cell", "status", "executed", "cached", "error") if c in df]].to_string(index=False))
    return 0 if (df["status"] == "ok").all() else 1


# ---------------------------------------------------------------- `-m hydra/launcher=slurm`
try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _sl
except ImportError:  # pragma: no cover - hydra-submitit-launcher is a dependency
    _sl = None


if _sl is not None:
    class SlurmLauncher(_sl.SlurmLauncher):
        """hydra-submitit-launcher's Slurm launcher, with failed cells failing their job and killed cells
        marked failed in sweep.csv."""

        def __call__(self, *args: Any, **kwargs: Any):
            ret = super().__call__(*args, **kwargs)
            if ret.status == JobStatus.FAILED:
                log.error("cell failed (%s: %s); this Slurm job will exit 1", type(ret._return_value).__name__,
                          ret._return_value)
                atexit.register(cluster.exit_failed)
            return ret

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            # login-node checks of every cell, before anything is submitted: the very checks of `emrobust sweep`
            cells = [list(o) for o in job_overrides]
            cfgs = load_cells(cells, self.hydra_context.config_loader, self.config, initial_job_idx)
            checked = check(cells, self.params, dry_run=False, cfgs=cfgs, start=initial_job_idx)
            for g in checked.gates:
                log.info(g.text)
            refuse(checked.gates)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            ex = cluster.executor(self.params, self.params["submitit_folder"])
            log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
            args = []
            for idx, overrides in enumerate(cells, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                args.append((overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            jobs = ex.map_array(self, *zip(*args))
            # which Slurm job runs which cell, for `emrobust status`
            (sweep_dir / "slurm_jobs.json").write_text(json.dumps(
                {str(idx): str(job.job_id) for (_, _, idx, _, _), job in zip(args, jobs)}, indent=1))
            rets = []
            for (overrides, _, _, _, _), (ret, why) in zip(args, cluster.collect(
                    [(job, sweep_dir / str(a[2]), a[0]) for a, job in zip(args, jobs)], sweep_dir)):
                if why is not None:
                    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                    ret._return_value = RuntimeError(why)
                rets.append(ret)
            return rets
