"""`emrobust status` on a local multirun (no Slurm): one line per cell from its run.json and the store; a cell
whose process is gone while its run.json says running was killed. (On Slurm, with pending reasons and job logs:
tests/test_slurm.py.)"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from conftest import cli


def _run(cell, **kw):
    base = {"overrides": [], "choices": {}, "seed": 0, "status": "running", "error": None, "stages": [],
            "diversity": {}, "metrics": {}, "started": time.time() - 75, "host": socket.gethostname(), "current": None}
    cell.mkdir(parents=True)
    (cell / "run.json").write_text(json.dumps(base | kw))


def test_status_of_a_local_sweep(tmp_path):
    sweep, art = tmp_path / "sweep", tmp_path / "artifacts"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (art / "em" / ".k1.partial").mkdir(parents=True)
    _run(sweep / "0", status="ok", seconds=12.0, stages=[{"name": "em", "status": "executed"},
                                                        {"name": "sample", "status": "cached"}])
    _run(sweep / "1", status="failed", failed_stage="em", error="ValueError: boom")
    _run(sweep / "2", pid=os.getpid(), artifacts=str(art),
         current={"node": "em", "key": "k1", "started": time.time() - 5})
    _run(sweep / "3", pid=dead.pid, current={"node": "sample", "key": "k2", "started": time.time()})
    (sweep / "4" / ".hydra").mkdir(parents=True)  # created, not started
    p = cli("status", str(sweep), tmp=tmp_path)
    lines = p.stdout.splitlines()
    assert lines[0].endswith("1 pending, 1 running, 1 done, 2 failed"), lines[0]
    rows = {ln.split()[0]: ln.split(None, 2)[1:] for ln in lines[1:]}
    assert rows["cell:0"] == ["done", "1 stages executed, 1 cached, 12s"]
    assert rows["cell:1"][0] == "failed" and rows["cell:1"][1].startswith("stage em: ValueError: boom; log: ")
    assert rows["cell:2"][0] == "running" and rows["cell:2"][1].startswith("stage em for 0:00:0") and \
        ", building, elapsed 0:01:1" in rows["cell:2"][1]
    assert rows["cell:3"] == ["failed", f"killed: process {dead.pid} is gone (run.json still said running)"]
    assert rows["cell:4"] == ["pending", "not started"]
    user = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")}
    bad = cli("status", str(tmp_path / "nope"), tmp=tmp_path, check=False, env=user)
    assert bad.returncode == 2 and bad.stderr.strip() == f"emrobust: error: {tmp_path / 'nope'}: not a directory"
