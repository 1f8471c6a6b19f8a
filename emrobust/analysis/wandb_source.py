"""W&B as the source of `emrobust analyze`: the stage runs of one or more groups (sweeps), from the W&B API or
from offline `run-*.wandb` files, rebuilt into run.json-shaped dicts per cell and turned into rows by the same
function as the local run.json files (`results.cell_row`), so both sources give one row schema.

Each executed stage is one W&B run (job_type = the node: the stage, or `evaluate@start`; group = sweep, config = the resolved cell config plus
`emrobust_cell` = overrides/choices/dir). The evaluate run's summary holds `metrics/<name>` and
`diversity/<name>`. What W&B cannot know: stages that were cached made no run, so `cached` is left empty and
`executed` counts the stage runs found; `error` only says which stage's run failed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core import tracking
from ..core.compose import GROUPS
from ..core.results import cell_row, summary_metrics

OK_STATES = {"finished"}
FAILED_STATES = {"failed", "crashed", "killed"}


def from_offline(dirs: list[Path], groups: list[str] | None = None) -> list[dict]:
    """Every offline run file under `dirs` (searched recursively: a sweep dir, a cell's wandb/ dir, a run dir)
    whose group is one of `groups` (all groups when empty)."""
    runs = []
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else sorted(d.rglob("run-*.wandb"))
        for f in files:
            r = tracking.read_offline_run(f)
            if r["job_type"] is not None and (not groups or r["group"] in groups):
                runs.append(r)
    return runs


def from_api(path: str, groups: list[str] | None = None, api=None) -> list[dict]:
    """The runs of W&B project `path` ("entity/project" or "project") in each group, via the public API."""
    if api is None:
        import wandb  # lazy: slow import

        api = wandb.Api()
    out = []
    for g in groups or [None]:
        for r in api.runs(path, filters={"group": g} if g else {}):
            out.append({"id": r.id, "name": r.name, "job_type": r.job_type, "group": r.group,
                        "config": dict(r.config), "summary_metrics": dict(r.summary_metrics),
                        "state": r.state, "created_at": str(getattr(r, "created_at", "") or "")})
    return out


def _scoped(summary: dict, prefix: str) -> dict:
    """{"metrics/x": v} -> {"x": v}; deeper keys ("metrics/a/b") were dicts in run.json, which rows skip."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in summary.items() if k.startswith(prefix + "/") and "/" not in k[n:]}


def _nested(summary: dict, prefix: str) -> dict[str, dict]:
    """{"training/em/tokens": v} -> {"em": {"tokens": v}} (the evaluate run logs the cell's training data)."""
    out: dict[str, dict] = {}
    for k, v in summary.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == prefix:
            out.setdefault(parts[1], {})[parts[2]] = v
    return out


def cells(runs: list[dict]) -> list[tuple[str, dict]]:
    """(cell name, run.json-shaped dict) per cell: the runs grouped by (group, cell output dir); the latest run
    of each stage counts. The cell is named by its output dir, prefixed with the group when there are several."""
    by_cell: dict[tuple, dict[str, dict]] = {}
    for r in sorted((r for r in runs if r["job_type"] != tracking.SWEEP_JOB_TYPE), key=lambda r: r["created_at"] or ""):
        info = r["config"].get("emrobust_cell") or {}
        key = (r["group"], info.get("dir") or r["name"])
        by_cell.setdefault(key, {})[r["job_type"]] = r
    several = len({g for g, _ in by_cell}) > 1
    out = []
    for (group, cell), stages in by_cell.items():
        any_run = next(iter(stages.values()))
        info = any_run["config"].get("emrobust_cell") or {}
        overrides, choices = info.get("overrides"), info.get("choices")
        if overrides is None:  # runs logged before emrobust_cell existed: the run name is the override string,
            overrides = [] if any_run["name"] in (None, "default") else any_run["name"].split(" ")
            choices = {g: v["name"] for g, v in any_run["config"].items()  # and each group's name its choice
                       if g in GROUPS and isinstance(v, dict) and "name" in v}
        failed = [s for s, r in stages.items() if r["state"] in FAILED_STATES]
        ev = stages.get("evaluate")
        if failed:
            status, error = "failed", "; ".join(f"W&B run of stage {s}: {stages[s]['state']}" for s in failed)
        elif ev is not None and ev["state"] in OK_STATES:
            status, error = "ok", None
        elif any(r["state"] == "running" for r in stages.values()):
            status, error = "running", None
        else:
            status, error = "no_evaluate_run", "no finished evaluate run in W&B (cached, or not reached)"
        summary = ev["summary_metrics"] if ev is not None else {}
        evaluations = {s: _scoped(r["summary_metrics"], "metrics") for s, r in stages.items()
                       if s.split("@")[0] == "evaluate"}
        run = {"overrides": overrides, "choices": choices or {}, "seed": any_run["config"].get("seed"),
               "status": status, "error": error,
               "stages": [{"name": s, "key": r["config"].get("stage_key"), "status": "executed"}
                          for s, r in stages.items()],
               "diversity": _scoped(summary, "diversity"),
               "training": _nested(summary, "training"),
               "metrics": {}}
        if ev is not None:  # metrics and the curve along EM training by the same rule as run.json (the classified
            # answers behind persona_half_life's interval are not in W&B: its _lo/_hi are left out here)
            cc = ((ev["config"].get("eval") or {}).get("curve") or {})
            run["metrics"], run["curve"] = summary_metrics(evaluations, None, cc)
        out.append((f"{group}/{cell}" if several else str(cell), run))
    return sorted(out, key=lambda c: (len(c[0]), c[0]))


def table(runs: list[dict]) -> pd.DataFrame:
    """The tidy table (one row per cell) from W&B stage runs: same columns as `results.sweep_table`."""
    rows = []
    for cell, run in cells(runs):
        row = cell_row(cell, run)
        row["cached"] = None  # cached stages make no W&B run: unknown here
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_table_offline(dirs: list[Path], group: str | None = None) -> "pd.DataFrame | None":
    """The sweep table of the newest sweep-level run (job_type `sweep`) under `dirs`, as logged: None if none."""
    found = []
    for d in dirs:
        for f in sorted(Path(d).rglob("run-*.wandb")):
            r = tracking.read_offline_run(f)
            if r["job_type"] == tracking.SWEEP_JOB_TYPE and (group is None or r["group"] == group):
                found.append((r["created_at"] or "", f))
    if not found:
        return None
    rows = tracking.read_offline_tables(max(found)[1]).get("sweep")
    return pd.DataFrame(rows) if rows is not None else None
