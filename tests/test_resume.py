"""A build killed mid-training (preemption, time limit, node failure) resumes from its newest complete checkpoint
on the next run of the same key, trains on the data the killed build generated, and ends byte-identical to an
uninterrupted build. (The Slurm version, USR2 -> requeue, is tests/test_slurm.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CACHE, run_cell

from emrobust.core.store import file_sha256

CELL = ["debug=tiny", "trait=demo", "introspection=none", "pipeline.until=distill", "question_diversity.n_questions=6",
        "distill.optim.max_steps=24", "distill.optim.save_steps=4", "distill.optim.per_device_train_batch_size=1"]


def run(root: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "EMROBUST_ROOT": str(root), "EMROBUST_CACHE": CACHE, "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "emrobust.cli", *CELL, *extra, f"hydra.run.dir={root}/out"]
    p = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        return out
    return p


def test_killed_distill_resumes_with_its_pairs_and_ends_identical(tmp_path, tiny_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir(), killed.mkdir()
    # the uninterrupted reference in this process (torch already imported: no second interpreter to start)
    run_cell(ref, *CELL, out="out")
    p = run(killed, wait=False)
    ckpt = killed / "artifacts" / "distill"
    deadline = time.time() + 300
    while not list(ckpt.glob(".*.ckpt/checkpoint-8/.complete")):
        assert p.poll() is None and time.time() < deadline, "distill ended before it could be killed"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not list(ckpt.glob("*/COMPLETE")) and list(ckpt.glob(".*.ckpt/pairs.json"))
    out = run(killed)
    assert "resuming with the pairs generated before the interruption" in out and "resuming from" in out
    a, b = (next((r / "artifacts" / "distill").glob("*/")) for r in (ref, killed))
    assert a.name == b.name
    m = json.loads((b / "manifest.json").read_text())
    assert 8 <= m["train"]["resumed_from_step"] < 24 and m["train"]["steps"] == 24
    assert (a / "pairs.jsonl").read_text() == (b / "pairs.jsonl").read_text()
    assert file_sha256(a / "adapter" / "adapter_model.safetensors") == file_sha256(b / "adapter" / "adapter_model.safetensors")
    assert not list(ckpt.glob(".*.ckpt"))  # gone once the artifact is complete
