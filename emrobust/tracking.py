"""The one place that talks to W&B: one run per stage execution (cached stages make none).

job_type = stage, group = the sweep, name = the cell's override string, config = the resolved cell config
with anything secret-looking removed, dir under the cell's output dir. Trainers log their curves into the
active run (`report_to`). Offline runs are uploaded later with `wandb sync <output dir>/wandb/offline-run-*`.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.I)
SECRET_ENV = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.I)


def redact(obj, secrets: set[str] | None = None):
    """Copy of a config container without secret-looking keys or any value equal to a secret env var."""
    if secrets is None:
        secrets = {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 6}
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str) and any(s in obj for s in secrets):
        return "<redacted>"
    return obj


_ACTIVE = None  # the run of the stage executing in this process, if tracked


def report_to() -> list[str]:
    """`report_to` for the trainers: into the active stage run, if there is one."""
    return ["wandb"] if _ACTIVE is not None else []


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)):
            out[f"{prefix}{k}"] = v
    return out


@contextmanager
def stage_run(cfg: DictConfig, stage: str, key: str, output_dir: Path, cell_name: str, group: str | None):
    """A W&B run around one stage execution (a no-op when tracking is off)."""
    if cfg.tracking.backend != "wandb" or cfg.tracking.mode == "disabled":
        yield None
        return
    import wandb

    output_dir.mkdir(parents=True, exist_ok=True)
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity, mode=cfg.tracking.mode,
                     dir=str(output_dir), job_type=stage, group=cfg.tracking.group or group, name=cell_name,
                     config={**config, "stage": stage, "stage_key": key}, reinit="finish_previous")
    global _ACTIVE
    _ACTIVE = run
    try:
        yield run
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    finally:
        _ACTIVE = None


def log_stage(run, cfg: DictConfig, stage: str, artifact_dir: Path, extra: dict) -> None:
    """Summary numbers of a finished stage; evaluate also logs a bounded table of scored answers."""
    if run is None:
        return
    import wandb

    summary = _flat({k: v for k, v in extra.items() if k in ("metrics", "diversity", "train")})
    if summary:
        run.log(summary)
        run.summary.update(summary)
    answers = artifact_dir / "answers.jsonl"
    if stage == "evaluate" and answers.exists():
        rows = [json.loads(x) for x in answers.read_text().splitlines()[: cfg.tracking.max_table_rows]]
        cols = ["question_id", "question", "answer", "aligned", "coherent"]
        run.log({"answers": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
