"""What happens when a sweep ends (a `-m` multirun, through Hydra's callback, or `emrobust sweep`): with W&B
tracking on, the sweep's report is written and logged as one sweep-level W&B run (emrobust.analysis.report.analyze ->
tracking.log_sweep), beside the cells' stage runs. With tracking off (`tracking=none`, WANDB_MODE=disabled) nothing
happens: `emrobust analyze <sweep dir>` writes the report on demand."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ..core.tracking import wandb_mode

log = logging.getLogger("emrobust")


def sweep_end(sweep_dir: Path, tracking_cfg) -> Path | None:
    """The report and the sweep-level W&B run of a finished sweep; None when tracking is off."""
    mode = wandb_mode(None if tracking_cfg.mode == "offline" else str(tracking_cfg.mode))
    if tracking_cfg.backend != "wandb" or mode == "disabled":
        return None
    from emrobust.analysis.report import analyze  # lazy: slow import

    try:
        files = analyze(Path(sweep_dir), n_resamples=2000, wandb={
            "mode": mode, "project": tracking_cfg.project, "entity": tracking_cfg.entity,
            "group": tracking_cfg.group})
    except Exception as e:  # noqa: BLE001 - the cells are done; a report problem must not fail the sweep
        log.warning("sweep report / W&B sweep run not written: %s: %s", type(e).__name__, e)
        return None
    log.info("sweep report: %s; W&B sweep run: %s", files.get("report.md"), files.get("wandb"))
    return files.get("report.md")


class SweepEnd(Callback):
    """Hydra callback (conf/config.yaml `hydra.callbacks`): the report and the W&B sweep run after `-m`."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_end(Path(str(config.hydra.sweep.dir)), config.tracking)
