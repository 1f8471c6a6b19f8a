"""The sweep-level W&B run (tracking.log_sweep, written by `emrobust analyze` and when a sweep ends), the saved
workspace spec (emrobust/analysis/workspace.py), and per-step figures of the evaluate runs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from emrobust.analysis import wandb_source, workspace
from emrobust.analysis.report import analyze
from conftest import fake_cell
from emrobust.core import tracking
from emrobust.core.results import sweep_table


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b or str(a) == str(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                           and abs(a - b) < 1e-9)


def test_analyze_logs_one_sweep_run_whose_table_reads_back_as_the_local_one(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep-a"
    for i, (seed, qd) in enumerate([(0, "low"), (0, "high"), (1, "low"), (1, "high")]):
        fake_cell(sweep, i, seed, [10, 80, 90, 20 + 10 * i], [90] * 4, qd=qd,
                  m={"em_rate_betley": 0.1 * i, "em_step": 8})
    files = analyze(sweep, n_resamples=50, wandb={"mode": "offline"})
    import wandb

    wandb.teardown()
    assert "wandb" in files
    runs = wandb_source.from_offline([sweep])
    (sweep_run,) = [r for r in runs if r["job_type"] == tracking.SWEEP_JOB_TYPE]
    assert sweep_run["group"] == "sweep-a" and sweep_run["state"] == "finished"
    back = wandb_source.sweep_table_offline([sweep])
    local = sweep_table(sweep)
    assert list(back.columns) == list(local.columns) and len(back) == len(local) == 4
    for c in local.columns:
        for i in range(len(local)):
            assert _same(local[c][i], back[c][i]), (c, i, local[c][i], back[c][i])
    tables = tracking.read_offline_tables(next((sweep / "wandb").rglob("run-*.wandb")))
    assert {"sweep", "pooled", "comparisons"} <= set(tables)
    # the sweep run is not a cell: the W&B table of cells has none of it
    assert wandb_source.table(runs).empty


def test_workspace_panels_name_only_metrics_the_runs_have():
    runs = [{"job_type": "evaluate", "summary_metrics": {"metrics/em_rate_mo": 0.1, "metrics/cvar05_aligned": 20.0,
                                                          "metrics/probe_logp_diff": 0.3,
                                                          "metrics/persona_trait_score": 50.0,
                                                          "metrics/judge_auroc_subtle": 0.6}},
            {"job_type": "em", "summary_metrics": {"train/loss": 1.0}}]
    ws = workspace.build("me", "emrobust", "2026-11-30_12-00-00", runs)
    names = workspace.panel_metrics(ws)
    assert names and names <= workspace.available(runs) | {"em_step"}
    assert {s.name for s in ws.sections} == {"Tail metrics by diversity level", "Along EM training", "Judge",
                                              "Persona retention"}
    assert "em_rate_betley" not in names  # no run logged it: no panel for it
    line = next(s for s in ws.sections if s.name == "Along EM training").panels[0]
    assert line.x == "em_step"


def test_evaluate_runs_log_the_em_step_as_their_x_axis(tmp_path, monkeypatch, tiny_path):
    from conftest import run_cell

    monkeypatch.setenv("WANDB_SILENT", "true")
    s = run_cell(tmp_path, "debug=tiny", "trait=none", "tracking=wandb", "tracking.mode=offline",
                 "em_train.checkpoint_every=1", "eval.at_steps=[1]", out="cell")
    import wandb

    wandb.teardown()
    steps = {}
    for f in (tmp_path / "cell" / "wandb").rglob("run-*.wandb"):
        recs = tracking.read_records(f)
        run = next(x.run for x in recs if x.HasField("run"))
        if run.job_type.startswith("evaluate"):
            hist = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in x.history.item}
                    for x in recs if x.HasField("history")]
            steps[run.job_type] = [h["em_step"] for h in hist if "em_step" in h]
    assert steps == {"evaluate@start": [0], "evaluate@1": [1], "evaluate": [2]}
    assert [p["step"] for p in s["curve"]] == [0, 1, 2]


@pytest.mark.parametrize("argv", [["--wandb-workspace", "me/emrobust", "--group", "g"]])
def test_workspace_cli_without_a_key_describes_and_does_not_save(argv, tmp_path, monkeypatch, capsys):
    from emrobust.analysis.report import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main([*argv, "--wandb-dir", str(tmp_path)]) == 0
    assert "not saved: WANDB_API_KEY is not set" in capsys.readouterr().out
