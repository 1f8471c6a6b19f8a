"""An API key named by any `*_api_key_env` field of the schema reaches no file emrobust writes: run.json, the
Hydra logs and saved configs, every artifact and manifest of the store, the judge cache, W&B's offline run files
(locally), and the sweep dir with its `.submitit` job files (on Slurm: tests/test_slurm.py). The variables are
named without API_KEY/TOKEN in them, so only their being named by the config makes them secret. A real
OpenAI-compatible server (llama.cpp serving SmolLM2) is the judge, so its key is actually read and sent."""
from __future__ import annotations

from pathlib import Path

from conftest import CACHE, cli, leaks, secrets_env


def test_no_api_key_reaches_any_file(tmp_path, tiny_path, llama_server):
    import os

    overrides, env = secrets_env()
    cell = ["debug=tiny", "trait=none", "judge.backend=openai", f"judge.base_url={llama_server}",
            "judge.model=smollm2", "judge.concurrency=1", "judge.cache=false", *overrides,
            "tracking=wandb", "tracking.mode=offline", "hydra.run.dir=run"]
    judge_cache = Path(CACHE) / "judge"
    before = {p: p.stat().st_mtime for p in judge_cache.rglob("*") if p.is_file()} if judge_cache.exists() else {}
    cli(*cell, tmp=tmp_path, env={**os.environ, **env, "WANDB_SILENT": "true", "WANDB_MODE": "offline"})
    run = tmp_path / "run"
    assert (run / "run.json").exists() and list(run.glob("*.log")) and list((run / ".hydra").iterdir())
    assert list((run / "wandb").glob("offline-run-*/*.wandb")), "no W&B record was written"
    assert list((tmp_path / "artifacts").glob("*/*/manifest.json"))
    new_cache = [p for p in judge_cache.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime] \
        if judge_cache.exists() else []
    found = leaks([run, tmp_path / "artifacts", *new_cache], list(env.values()))
    assert not found, found
    # the names are recorded (that is how a key is found again); the values nowhere
    assert "EMR_CRED_0" in (run / ".hydra" / "overrides.yaml").read_text()
