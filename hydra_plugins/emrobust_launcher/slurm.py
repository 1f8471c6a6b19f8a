"""Hydra launchers: hydra-submitit-launcher's Slurm launcher, with failed cells ending their Slurm job FAILED.

Hydra's `run_job` catches the task's exception and returns it inside a `JobReturn` (status FAILED), so the
stock submitit job exits 0 and Slurm records a cell that raised as COMPLETED (hydra issue #1928). Here the job
still returns that `JobReturn` to the login node (submitit pickles it as usual, so the sweep keeps going and
Hydra raises at the end, exactly as with the local launcher), and then the job's process exits 1, so `sacct`
says FAILED and `afterok` dependencies do not fire.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

log = logging.getLogger(__name__)


def _exit_failed() -> None:
    """Registered last, so it runs first at interpreter exit: after submitit has written the result pickle."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        ret = super().__call__(*args, **kwargs)
        if ret.status == JobStatus.FAILED:
            log.error("cell failed (%s: %s); this Slurm job will exit 1", type(ret._return_value).__name__,
                      ret._return_value)
            atexit.register(_exit_failed)
        return ret
