"""W&B offline: one run per executed stage with the stage's numbers; cached stages make none; no secret
reaches the run files or the cell's output dir."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from emrobust.analysis import wandb_source
from emrobust.analysis.report import main
from conftest import cli, compose
from emrobust.engine import pipeline
from emrobust.core import tracking
from emrobust.errors import ConfigError
from emrobust.core.results import sweep_table

SECRET = "sk-fake-emrobust-test-0123456789"


def wandb_records(path: Path) -> list:
    return tracking.read_records(path)


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def test_offline_runs_per_stage_and_no_secret(tmp_path, monkeypatch, tiny_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ("debug=tiny", "trait=none", "tracking=wandb", "tracking.mode=offline")
    out = tmp_path / "out"
    s = pipeline.run_cell(compose(*overrides, tmp=tmp_path), out, list(overrides), group="sweep-x")
    assert [x["name"] for x in s["stages"] if x["status"] == "executed"] == ["em", "sample@start", "sample", "evaluate@start",
                                                                                "evaluate"]
    # run.finish() can return before wandb's core process has written the run file out (seen once under load:
    # a file without its records); teardown waits for it, as process exit does after a real sweep
    import wandb

    wandb.teardown()
    runs = _run_dirs(out)
    assert len(runs) == 5  # em, sample@start, evaluate@start (the model before EM), sample, evaluate
    seen = {}
    for r in runs:
        records = wandb_records(next(r.glob("*.wandb")))
        run_rec = next(x.run for x in records if x.HasField("run"))
        history = {i.key or "/".join(i.nested_key): i.value_json for x in records if x.HasField("history")
                   for i in x.history.item}
        seen[run_rec.job_type] = (run_rec, history)
    assert set(seen) == {"em", "sample@start", "evaluate@start", "sample", "evaluate"}
    ev_run, ev_hist = seen["evaluate"]
    assert ev_run.run_group == "sweep-x" and ev_run.display_name == " ".join(overrides)
    assert "metrics/mean_aligned" in ev_hist and ev_hist["answers/_type"] == '"table-file"' and ev_hist["answers/nrows"] == "3"
    assert "train/last_loss" in seen["em"][1]
    assert "train/loss" in seen["em"][1]  # the trainer's own curve went into the stage's run (report_to)
    assert json.loads(seen["em"][1]["data/tokens"]) == s["training"]["em"]["tokens"] > 0  # what it trained on
    assert json.loads(ev_hist["training/em/examples"]) == s["training"]["em"]["examples"]
    # no secret anywhere under the cell's output dir (run files included)
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
    # a second identical run is all cached and creates no new W&B run
    pipeline.run_cell(compose(*overrides, tmp=tmp_path), out, list(overrides), group="sweep-x")
    assert len(_run_dirs(out)) == 5


def test_redact():
    cfg = {"eval": {"judge": {"api_key_env": "OPENAI_API_KEY", "api_key": "x", "model": "m"}},
           "note": f"key={SECRET}", "token": "t"}
    r = tracking.redact(cfg, {SECRET})
    assert r["eval"]["judge"] == {"api_key_env": "OPENAI_API_KEY", "api_key": "<redacted>", "model": "m"}
    assert r["note"] == "<redacted>" and r["token"] == "<redacted>"
    assert json.dumps(r).count(SECRET) == 0


def test_a_variable_named_by_an_api_key_env_field_is_secret_whatever_its_name(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_CRED", SECRET)  # no API_KEY/TOKEN in the name: secret because the config names it
    cfg = {"eval": {"judge": {"api_key_env": "MY_JUDGE_CRED"}}, "generation": {"extra_body": {"auth": SECRET}}}
    assert SECRET in tracking.secret_values(cfg) and SECRET not in tracking.secret_values({})
    assert tracking.redact(cfg)["generation"]["extra_body"]["auth"] == "<redacted>"


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) if (pd.isna(a) or pd.isna(b)) else (a == b or str(a) == str(b))


def test_analyze_from_wandb_records_matches_run_json(tmp_path, tiny_path, monkeypatch):
    """A 2-cell tiny sweep logged offline: the table rebuilt from the W&B run files (and from the W&B API
    shape) equals the one from the cells' run.json in every config, diversity and metric column."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    cli("-m", "debug=tiny", "introspection=none", "question_diversity=low,high", "tracking=wandb",
        "tracking.mode=offline", f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    local = sweep_table(sweep)
    runs = wandb_source.from_offline([sweep])
    assert sorted(r["job_type"] for r in runs) == sorted(["questions", "distill", "fold", "em", "sample@start",
                                                          "evaluate@start", "sample", "evaluate"] * 2
                                                         + ["classifier"])  # one persona classifier per trait
    assert {r["group"] for r in runs} == {"sweep"} and {r["state"] for r in runs} == {"finished"}
    wb = wandb_source.table(runs)
    assert set(wb.columns) == set(local.columns) and len(wb) == len(local) == 2
    assert list(wb["cell"]) == ["0", "1"] and list(wb["question_diversity"]) == ["low", "high"]
    assert {"trait", "base_model", "em_train", "tracking.mode", "div_vendi", "div_strategy", "mean_aligned_lo",
            "mean_aligned_hi", "em_rate_betley", "judge", "persona_trait_score", "persona_trait_score_fold",
            "distill_pairs", "distill_tokens", "em_tokens", "em_drop_share", "em_max_drop_share"} <= set(wb.columns)
    assert local["div_vendi"][0] != local["div_vendi"][1]  # the two cells really differ in measured diversity
    for c in local.columns:
        if c == "cached":  # cached stages make no W&B run
            assert wb[c].isna().all()
            continue
        for i in range(2):
            assert _same(wb[c][i], local[c][i]), (c, i, wb[c][i], local[c][i])
    # the CLI: --wandb-dir with a group filter writes the report from the W&B records
    out = tmp_path / "wb_report"
    assert main(["--wandb-dir", str(sweep), "--group", "sweep", "--out", str(out), "--n-resamples", "100"]) == 0
    csv = pd.read_csv(out / "summary.csv")
    assert csv["div_vendi"].tolist() == pytest.approx(local["div_vendi"].tolist())
    assert (out / "em_vs_vendi.png").read_bytes()[:4] == b"\x89PNG" and (out / "report.md").exists()
    with pytest.raises(ConfigError, match="no W&B runs found"):  # no runs in that group: exit 2 from the CLI
        main(["--wandb-dir", str(sweep), "--group", "other", "--out", str(out)])

    # the W&B API path: the same runs as the public API returns them (a stand-in for the network call only)
    class ApiRun:
        def __init__(self, r):
            self.__dict__.update({k: r[k] for k in ("id", "name", "job_type", "group", "config",
                                                      "summary_metrics", "state", "created_at")})

    class Api:
        calls = []

        def runs(self, path, filters):
            self.calls.append((path, filters))
            return [ApiRun(r) for r in runs if r["group"] == filters["group"]]

    api = Api()
    via_api = wandb_source.table(wandb_source.from_api("me/emrobust", ["sweep"], api=api))
    assert api.calls == [("me/emrobust", {"group": "sweep"})]
    assert via_api.equals(wb)
