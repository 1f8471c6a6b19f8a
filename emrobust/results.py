"""Results as tables: one row per cell from its run.json (or from W&B runs rebuilt into the same shape), the
sweep table and sweep.csv, and the one-cell summary printed after a run.

This module imports only the standard library, numpy and pandas: `emrobust analyze` and the sweep table work
where torch is not installed.
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

# override keys that would overwrite a column of their own: the `+cell=<preset>` of experiment=demo is a
# preset's name, while `cell` is the cell's output dir
RENAMED = {"cell": "cell_preset"}
START = "@start"  # node-id suffix of the evaluation of the cell's starting model (before EM)


def cell_metrics(evaluations: dict[str, dict]) -> dict:
    """The cell's metrics from its evaluate nodes' metrics ({node id: metrics}): the evaluated model's, plus the
    persona score of the starting model (before EM) as `persona_trait_score_fold` (the evaluated model's own
    when there was no EM)."""
    final = dict(evaluations.get("evaluate", {}))
    start = evaluations.get("evaluate" + START, final)
    for s in ("", "_lo", "_hi"):
        if "persona_trait_score" + s in start:
            final["persona_trait_score_fold" + s] = start["persona_trait_score" + s]
    return final


def cell_row(cell: str, run: dict) -> dict:
    """The sweep-table row of one cell from its run.json dict (or the same dict rebuilt from W&B runs by
    analysis/wandb_source.py): the one row schema of sweep.csv and `emrobust analyze`."""
    row = {"cell": cell}
    for o in run["overrides"]:
        if "=" in o:
            k, v = o.split("=", 1)
            k = k.lstrip("+~")
            row[RENAMED.get(k, k)] = v
    row |= {k: v for k, v in run.get("choices", {}).items() if k not in row}
    row |= {"seed": run.get("seed"), "status": run["status"], "error": run.get("error")}
    row |= {"executed": sum(s["status"] == "executed" for s in run["stages"]),
            "cached": sum(s["status"] == "cached" for s in run["stages"])}
    row |= {f"div_{k}" if not k.startswith("div_") else k: v for k, v in run.get("diversity", {}).items()
            if not isinstance(v, (dict, list))}
    row |= {k: v for k, v in run.get("metrics", {}).items() if not isinstance(v, (dict, list))}
    return row


def _cells(sweep_dir: Path) -> list[Path]:
    return sorted(Path(sweep_dir).glob("*/run.json"), key=lambda p: (len(p.parent.name), p.parent.name))


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per cell: overrides as columns, then status, diversity and metrics."""
    return pd.DataFrame([cell_row(rj.parent.name, json.loads(rj.read_text())) for rj in _cells(sweep_dir)])


@contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_sweep_csv(sweep_dir: Path) -> Path:
    """sweep.csv in the sweep dir, rewritten whole under a lock (cells of a sweep finish concurrently)."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir / ".sweep.lock"):
        out, tmp = sweep_dir / "sweep.csv", sweep_dir / ".sweep.csv.tmp"
        sweep_table(sweep_dir).to_csv(tmp, index=False)
        tmp.replace(out)
    return out


def record_failure(output_dir: Path, overrides: list[str], error: str) -> None:
    """run.json for a cell that died without finishing it (its Slurm job was killed or cancelled): none, or one
    still saying `running` (the node it was in becomes `failed_stage`)."""
    output_dir = Path(output_dir)
    rj = output_dir / "run.json"
    summary = json.loads(rj.read_text()) if rj.exists() else None
    if summary is not None and summary.get("status") != "running":
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "seed"), None)
    if summary is None:
        summary = {"overrides": list(overrides), "choices": {}, "seed": int(seed) if seed is not None else None,
                   "stages": [], "diversity": {}, "metrics": {}}
    elif summary.get("current"):
        summary["failed_stage"] = summary["current"]["node"]
    summary |= {"status": "failed", "error": error, "current": None}
    tmp = output_dir / ".run.json.failure.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(rj)


def format_metrics(summary: dict) -> str:
    """The lines printed after a cell: each stage's status and time, the headline metrics with intervals."""
    m = summary.get("metrics", {})
    lines = [f"status: {summary['status']}"]
    for s in summary["stages"]:
        lines.append(f"  {s['name']:<16} {s['status']:<9} {s['seconds']:>8.1f}s")
    for k in ("em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
              "none_rate", "worst_question_em_rate"):
        if m.get(k) is not None:
            lo, hi = m.get(k + "_lo"), m.get(k + "_hi")
            lines.append(f"  {k:<16} {m[k]:.3f}  [{lo if lo is not None else float('nan'):.3f}, "
                         f"{hi if hi is not None else float('nan'):.3f}]")
    for k in ("worst_question", "n_answers", "judge"):
        if k in m:
            lines.append(f"  {k:<16} {m[k]}")
    return "\n".join(lines)
