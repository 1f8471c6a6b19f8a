"""The store's guarantees seen from a real cell (tiny_random, trait=none): a process killed at a stage boundary
leaves a store the next run completes; a damaged artifact is rebuilt, or an error naming its file; a full disk
during a build leaves no completed artifact and says so."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CACHE, cli, run_cell, small_filesystem

CELL = ["debug=tiny", "trait=none"]


def _user_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")}


def _statuses(run_dir: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["stages"]}


def test_killed_between_stages_then_damaged_then_rebuilt(tmp_path, tiny_path):
    # 1. killed right after em is complete: run.json says where it was; the next run completes from the store
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "EMROBUST_CACHE": CACHE, "HYDRA_FULL_ERROR": "1"}
    p = subprocess.Popen([sys.executable, "-m", "emrobust.cli", *CELL, "hydra.run.dir=killed"], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in p.stdout:
        out.append(line)
        if "stage em: executed" in line:
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(out)[-3000:]
    run = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert run["status"] == "running" and run["current"]["node"] in ("em", "sample@start")
    art = tmp_path / "artifacts"
    assert [d.name for d in (art / "em").iterdir() if not d.name.startswith(".")]  # em is complete
    run_cell(tmp_path, *CELL, out="again")  # in this process; (sample may have begun: its partial build is discarded)
    assert not list(art.glob("*/.*.partial"))
    assert _statuses(tmp_path / "again") == {"questions": "skipped", "distill": "skipped", "introspect": "skipped",
                                             "fold": "skipped", "directions": "skipped", "em": "cached",
                                             "sample@start": "executed", "sample": "executed",
                                             "capability": "skipped", "classifier": "skipped", "evaluate@start": "executed",
                                             "evaluate": "executed"}

    # 2. a damaged em adapter: an error naming the file (on_damage=error), or rebuilt with the run saying why
    adapter = next((art / "em").glob("*/adapter/adapter_model.safetensors"))
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF
    adapter.write_bytes(bytes(data))
    p = cli(*CELL, "pipeline.on_damage=error", "hydra.run.dir=error", tmp=tmp_path, check=False, env=_user_env())
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"DamagedArtifact: artifact {adapter.parents[1]} is damaged: {adapter}: does not match its manifest sha256" \
        in p.stderr and "stage em failed" in p.stderr
    run_cell(tmp_path, *CELL, out="rebuilt")
    run = json.loads((tmp_path / "rebuilt" / "run.json").read_text())
    em = next(s for s in run["stages"] if s["name"] == "em")
    assert em["status"] == "executed" and "adapter_model.safetensors: does not match" in em["damaged"]
    # the same key rebuilt deterministically: the answers sampled from the good adapter stay valid
    assert _statuses(tmp_path / "rebuilt")["sample"] == "cached"


def test_a_full_disk_fails_the_cell_with_no_artifact(tmp_path, tiny_path):
    """paths.artifacts on a 64 KiB tmpfs mounted here (root only): a stage cannot be written (em fits; sample
    does not)."""
    with small_filesystem(tmp_path / "small", "64k") as small:
        t0 = time.time()
        p = cli(*CELL, f"paths.artifacts={small}", "hydra.run.dir=run", tmp=tmp_path, check=False, env=_user_env())
        assert p.returncode == 1, p.stderr[-2000:]
        line = next(ln for ln in p.stderr.splitlines() if ln.startswith("emrobust: error:"))
        run = json.loads((tmp_path / "run" / "run.json").read_text())
        stage = run["failed_stage"]
        assert line.startswith(f"emrobust: error: stage {stage} failed: NoSpace: [Errno 28] no space left on the "
                               f"device of {small}") and "nothing was kept" in line, line
        assert time.time() - t0 < 300
        assert run["status"] == "failed" and "NoSpace" in run["error"]
        assert not list((small / stage).glob("*/COMPLETE")) and not list(small.glob("*/.*.partial"))
