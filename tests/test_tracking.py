"""W&B offline: one run per executed stage with the stage's numbers; cached stages make none; no secret
reaches the run files or the cell's output dir."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import compose
from emrobust import pipeline, tracking

SECRET = "sk-fake-emrobust-test-0123456789"


def wandb_records(path: Path) -> list:
    """The protobuf Records of a .wandb file: a ':W&B' header, then the LevelDB log format (32 KiB blocks,
    7-byte record headers: crc32, length, type FULL/FIRST/MIDDLE/LAST), decoded with wandb's own protos."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, out, buf = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    recs = []
    for raw in out:
        r = wandb_internal_pb2.Record()
        r.ParseFromString(raw)
        recs.append(r)
    return recs


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def test_offline_runs_per_stage_and_no_secret(tmp_path, monkeypatch, tiny_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ("debug=tiny", "trait=none", "tracking=wandb", "tracking.mode=offline")
    out = tmp_path / "out"
    s = pipeline.run_cell(compose(*overrides, tmp=tmp_path), out, list(overrides), group="sweep-x")
    assert [x["name"] for x in s["stages"] if x["status"] == "executed"] == ["em", "evaluate"]
    runs = _run_dirs(out)
    assert len(runs) == 2  # em, evaluate
    seen = {}
    for r in runs:
        records = wandb_records(next(r.glob("*.wandb")))
        run_rec = next(x.run for x in records if x.HasField("run"))
        history = {i.key or "/".join(i.nested_key): i.value_json for x in records if x.HasField("history")
                   for i in x.history.item}
        seen[run_rec.job_type] = (run_rec, history)
    assert set(seen) == {"em", "evaluate"}
    ev_run, ev_hist = seen["evaluate"]
    assert ev_run.run_group == "sweep-x" and ev_run.display_name == " ".join(overrides)
    assert "metrics/mean_aligned" in ev_hist and ev_hist["answers/_type"] == '"table-file"' and ev_hist["answers/nrows"] == "3"
    assert "train/last_loss" in seen["em"][1]
    assert "train/loss" in seen["em"][1]  # the trainer's own curve went into the stage's run (report_to)
    # no secret anywhere under the cell's output dir (run files included)
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
    # a second identical run is all cached and creates no new W&B run
    pipeline.run_cell(compose(*overrides, tmp=tmp_path), out, list(overrides), group="sweep-x")
    assert len(_run_dirs(out)) == 2


def test_redact():
    cfg = {"eval": {"judge": {"api_key_env": "OPENAI_API_KEY", "api_key": "x", "model": "m"}},
           "note": f"key={SECRET}", "token": "t"}
    r = tracking.redact(cfg, {SECRET})
    assert r["eval"]["judge"] == {"api_key_env": "OPENAI_API_KEY", "api_key": "<redacted>", "model": "m"}
    assert r["note"] == "<redacted>" and r["token"] == "<redacted>"
    assert json.dumps(r).count(SECRET) == 0
