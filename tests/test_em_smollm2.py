"""Real EM training on CPU (slow): SmolLM2-135M on 64 examples of Betley's insecure, read from the mirror."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, compose
from emrobust.engine import pipeline


@pytest.mark.slow
def test_insecure_64_on_smollm2_from_the_mirror_loss_falls(tmp_path, monkeypatch):
    monkeypatch.setenv("EMROBUST_DATA_MIRROR", str(SHARED_DATA))
    overrides = ["base_model=smollm2_135m", "trait=none", "em_dataset=insecure", "em_dataset.n_examples=64",
                 "pipeline.until=em", "pipeline.device=cpu",
                 # 2 epochs (batch 4 x 256 tokens): epoch 2 sees the same examples as epoch 1
                 "em_train.optim.per_device_train_batch_size=4", "em_train.optim.gradient_accumulation_steps=1",
                 "em_train.optim.max_length=256", "em_train.optim.num_train_epochs=2",
                 "em_train.optim.learning_rate=2e-4", "em_train.optim.warmup_steps=0",
                 "em_train.max_drop_share=0.25"]  # ~9% of insecure starts its answer past 256 tokens
    cfg = compose(*overrides, tmp=tmp_path)
    s = pipeline.run_cell(cfg, tmp_path / "run", overrides)
    assert s["status"] == "ok"
    art = Path(next(x["artifact"] for x in s["stages"] if x["name"] == "em"))
    m = json.loads((art / "manifest.json").read_text())
    assert m["n_train"] == 64 and m["persona"] is False
    # examples whose assistant turn starts past 256 tokens have nothing to train on and are dropped
    kept = m["train"]["n_examples"]
    assert 32 <= kept < 64 and m["data"]["dropped_max_length"] == 64 - kept == len(
        (art / "dropped.jsonl").read_text().splitlines())
    per_epoch = -(-kept // 4)
    assert m["train"]["steps"] == 2 * per_epoch
    losses = [h["loss"] for h in json.loads((art / "train_log.json").read_text()) if "loss" in h]
    assert len(losses) == 2 * per_epoch
    first, second = sum(losses[:per_epoch]) / per_epoch, sum(losses[per_epoch:]) / per_epoch
    assert second < first * 0.9, (first, second)
