"""The one place that talks to Slurm (through submitit): the Hydra launcher for `-m hydra/launcher=slurm`, the
executor `emrobust sweep` submits its jobs with, the job callable, and `sacct`.

Failures are failures. Hydra's `run_job` catches a cell's exception and returns it inside a `JobReturn`, so the
stock submitit job exits 0 and Slurm records a cell that raised as COMPLETED (hydra issue #1928). Here the job
still returns that `JobReturn` to the login node (submitit pickles it as usual, so the sweep keeps going and
Hydra raises at the end, exactly as with the local launcher), and then its process exits 1, so `sacct` says
FAILED and `afterok` dependencies do not fire. A cell whose job Slurm killed (time limit, OOM, scancel) wrote no
`run.json`: the login node marks it `failed` in `sweep.csv` with Slurm's final state.

Requeue: on preemption or timeout submitit gets USR2 and requeues the job (`max_num_timeout`); the rerun finds
every finished stage cached and the interrupted training stage's checkpoints in the store (see
`emrobust.store.Store.checkpoint_dir`), and resumes from the newest complete one.
"""
from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

# hydra.launcher keys that are not sbatch parameters
_INIT_KEYS = {"submitit_folder", "max_num_timeout", "_target_"}


def executor(params: dict, folder: str | os.PathLike):
    """A submitit Slurm executor from `hydra.launcher` params (conf/hydra/launcher/slurm.yaml), mapped exactly as
    hydra-submitit-launcher maps them (common keys as is, the rest `slurm_<key>`)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    ex = submitit.AutoExecutor(cluster="slurm", folder=str(folder),
                               slurm_max_num_timeout=params.get("max_num_timeout", 0))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in _INIT_KEYS})
    if (params.get("tasks_per_node") or 1) * (params.get("nodes") or 1) > 1:
        # a rank that dies takes the others with it (with NCCL they would wait in a collective until the process
        # group's timeout); hydra-submitit-launcher's config has no srun_args key, so it is set here
        ex.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
    return ex


def _exit_failed() -> None:
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


def job_failure(job) -> str:
    """Why a submitit job produced no result, for sweep.csv."""
    state = sacct_state(job.job_id) or job.state
    return f"Slurm job {job.job_id} ended {state} without a result (killed, timed out or cancelled)"


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
            from hydra.core.utils import JobStatus

            ret = super().__call__(*args, **kwargs)
            if ret.status == JobStatus.FAILED:
                log.error("cell failed (%s: %s); this Slurm job will exit 1", type(ret._return_value).__name__,
                          ret._return_value)
                atexit.register(_exit_failed)
            return ret

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            from hydra.core.singleton import Singleton
            from hydra.core.utils import JobReturn, JobStatus, filter_overrides

            from . import results
            from .checks import check_launcher, validate_cells

            # login-node validation of every cell, before anything is submitted
            check_launcher(self.params)
            validate_cells(job_overrides, lambda o: self.hydra_context.config_loader.load_sweep_config(self.config, o),
                           self.params, initial_job_idx)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            ex = executor(self.params, self.params["submitit_folder"])
            log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
            args = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            jobs = ex.map_array(self, *zip(*args))
            rets, lost = [], False
            for (overrides, _, idx, _, _), job in zip(args, jobs):
                try:
                    rets.append(job.results()[0])
                except Exception as e:  # noqa: BLE001 - the job died without returning (killed by Slurm)
                    why = job_failure(job)
                    log.error("cell #%d: %s (%s)", idx, why, type(e).__name__)
                    results.record_failure(sweep_dir / str(idx), list(overrides), why)
                    lost = True
                    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
                    ret._return_value = RuntimeError(why)
                    rets.append(ret)
            if lost:
                results.write_sweep_csv(sweep_dir)
            return rets


# ---------------------------------------------------------------- `emrobust sweep` jobs
class CellJob:
    """One Slurm job of `emrobust sweep`: one cell (or its stages up to `until`), composed from overrides in the
    job. Checkpointable: on USR2 (preemption, time limit) submitit requeues it with the same arguments."""

    def __init__(self, overrides: list[str], output_dir: str, until: str | None = None,
                 sweep_dir: str | None = None, group: str | None = None):
        self.overrides, self.output_dir, self.until = list(overrides), output_dir, until
        self.sweep_dir, self.group = sweep_dir, group

    def __call__(self) -> str:
        from omegaconf import open_dict

        from . import distributed, pipeline, results
        from .compose import choices as recorded, compose

        extra = [f"pipeline.until={self.until}"] if self.until else []
        cfg = compose(self.overrides + extra, hydra=True)
        choices = recorded(cfg.hydra.runtime.choices)  # as -m records them
        with open_dict(cfg):
            del cfg["hydra"]
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            summary = pipeline.run_cell(cfg, Path(self.output_dir), self.overrides, choices, self.group)
            print(results.format_metrics(summary))
            return summary["status"]
        finally:
            if self.sweep_dir and distributed.is_main():
                results.write_sweep_csv(Path(self.sweep_dir))

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

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
