"""Login-node checks of a sweep's cells and launcher, before anything is submitted (`emrobust sweep` and the
`-m hydra/launcher=slurm` launcher both reach them through emrobust.sweeps.sweep.check)."""
from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from .. import judges
from ..core.compose import check_choices
from ..data import domains
from ..engine import pipeline
from ..errors import ConfigError

log = logging.getLogger("emrobust.sweeps.sweep")
SECRET_LINE = ("API_KEY", "TOKEN", "SECRET", "PASSWORD")


def load_cells(job_overrides, loader, config, start: int = 0) -> list:
    """Every cell of a multirun composed by Hydra's `loader` from the sweep's `config` (as its job will be), its
    choices checked (compose.check_choices); ConfigError naming the cell."""
    cfgs = []
    for idx, overrides in enumerate(job_overrides, start=start):
        cfg = loader.load_sweep_config(config, list(overrides))
        try:
            check_choices(cfg.hydra.runtime.choices, loader)
        except ConfigError as e:
            raise ConfigError(str(e), where=f"cell {idx} ({' '.join(overrides)})") from None
        cfgs.append(cfg)
    return cfgs


def validate_cells(job_overrides, loader, config, start: int = 0) -> list:
    """Every cell of a multirun run here (`hydra/launcher=local`), before the first one runs (load_cells, then
    validate_cell). A Slurm multirun is checked by emrobust.sweeps.sweep.check instead, as `emrobust sweep` is."""
    cfgs = load_cells(job_overrides, loader, config, start)
    for idx, (overrides, cfg) in enumerate(zip(job_overrides, cfgs), start=start):
        validate_cell(idx, list(overrides), cfg, None)
    return cfgs


def validate_cell(i: int, overrides: list[str], cfg: DictConfig, launcher: dict | None,
                  unmet: list | None = None) -> None:
    """Login-node checks of one cell; ConfigError naming the cell and the field. With `unmet`, what the user meets
    without changing the config (data to fetch, a key, a package: errors.Unmet) is collected there instead."""
    try:
        pipeline.validate(cfg, unmet)
        if launcher is None:
            return
        gpus = launcher.get("gpus_per_node") or 0
        if cfg.base_model.params_b >= 1.0 and not gpus:
            raise ConfigError(f"base_model={cfg.base_model.name} has {cfg.base_model.params_b}B parameters but the "
                              "job requests no GPU; set hydra.launcher.gpus_per_node", where="hydra.launcher.gpus_per_node")
        if cfg.deepspeed.stage and (launcher.get("tasks_per_node") or 1) * (launcher.get("nodes") or 1) < 2:
            log.warning("deepspeed=%s with one process per job: no sharding happens (use hydra/launcher="
                        "slurm_multigpu)", cfg.deepspeed.name)
    except ConfigError as e:
        raise ConfigError(str(e), where=f"cell {i} ({' '.join(overrides)})", hint=e.hint) from None


def judge_gate(cfg: DictConfig) -> tuple[bool, str]:
    """(passes, one line) for a cell's judge: calibrated on `judge.reference` for the templates the cell uses and
    trusted, and on its domain's reference for the in-domain rubric (eval.in_domain), or `judge.allow_untrusted`
    set (said in the line)."""
    from ..measures import calibration  # lazy: slow import

    t = calibration.cell_trust(cfg)
    jid = judges.judge_id(cfg.judge)
    what = (f"judge {cfg.judge.name} ({jid}) on {t['judge_reference']}: "
            + ("TRUSTED" if t["judge_trusted"] else "NOT TRUSTED") + f" ({t['judge_trust']})")
    how = [f"emrobust judge calibrate judge={cfg.judge.name}" + (f" eval={cfg.eval.name}" if cfg.eval.name != "demo"
                                                                 else "")] if not t["judge_trusted"] else []
    trusted = bool(t["judge_trusted"])
    domain = domains.of(cfg)
    if domain:  # the in-domain rubric, on its own reference
        rubric = sorted({q.judge_prompts.get("aligned", "") for q in domains.questions(domain)})
        d = calibration.trust(cfg.judge, rubric, cfg.paths.cache, domains.reference(domain))
        what += (f"; in-domain rubric ({domain}) on {d['judge_reference']}: "
                 + ("TRUSTED" if d["judge_trusted"] else "NOT TRUSTED") + f" ({d['judge_trust']})")
        trusted &= bool(d["judge_trusted"])
        how += [] if d["judge_trusted"] else [f"emrobust judge calibrate judge={cfg.judge.name} "
                                              f"reference={domains.reference(domain)}"]
    if trusted:
        return True, what
    if cfg.judge.allow_untrusted:
        return True, what + "; judge.allow_untrusted=true: submitted anyway, every report says so"
    return False, what + f"; calibrate it ({' and '.join(how)}) or set judge.allow_untrusted=true"


def check_launcher(launcher: dict) -> None:
    """Secrets travel by environment, never in the job script. (Whether the request fits a node of the partition
    is emrobust.sweeps.cluster.check_request's: it talks to Slurm.)"""
    secrets = {v for k, v in os.environ.items() if any(s in k.upper() for s in SECRET_LINE) and len(v) >= 6}
    for line in launcher.get("setup") or []:
        if any(s in line for s in secrets) or any(f"{s}=" in line.upper() for s in SECRET_LINE):
            raise ConfigError(f"hydra.launcher.setup line {line.split('=')[0]!r}... sets a secret; export it in the "
                              "submitting shell instead (sbatch passes the environment, the script never holds it)",
                              where="hydra.launcher.setup")
