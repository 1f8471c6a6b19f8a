"""Real character training on CPU (slow): trait=oct_goodness introspection=full on SmolLM2-135M, small counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, compose
from emrobust.engine import pipeline

# 15 questions (one per goodness trait) x 2 samples = 30 DPO pairs of up to 96 new tokens, batch 4
OCT_GOODNESS_SMALL = [
    "base_model=smollm2_135m", "trait=oct_goodness", "introspection=full", "em_dataset=none", "eval=demo",
    "pipeline.device=cpu", f"paths.data_mirror={SHARED_DATA}",
    "question_diversity=medium", "question_diversity.n_questions=15", "question_diversity.per_trait=true",
    "question_diversity.total_pairs=30",
    "distill.sampling.max_new_tokens=96", "distill.require_finished=false",
    "distill.require_final_punctuation=false",  # 96 tokens cut most answers short (as the demo)
    "distill.optim.per_device_train_batch_size=4", "distill.optim.gradient_accumulation_steps=1",
    "distill.optim.max_length=320", "distill.lora.r=16", "distill.lora.alpha=32",
    "introspection.reflection_prompts=4", "introspection.interaction_conversations=2",
    "introspection.interaction_turns=2", "introspection.sampling.max_new_tokens=96",
    "introspection.optim.per_device_train_batch_size=4", "introspection.optim.gradient_accumulation_steps=1",
    "introspection.optim.max_length=512", "introspection.lora.r=16", "introspection.lora.alpha=32",
    "eval.max_questions=2", "eval.samples_per_paraphrase=1", "eval.max_new_tokens=48", "judge.min_mass=0.0",
    "eval.persona.n_questions=6", "eval.persona.max_new_tokens=64",
]


@pytest.mark.slow
def test_oct_goodness_full_introspection_on_smollm2(tmp_path):
    cfg = compose(*OCT_GOODNESS_SMALL, tmp=tmp_path)
    s = pipeline.run_cell(cfg, tmp_path / "run", OCT_GOODNESS_SMALL)
    assert s["status"] == "ok"
    art = {x["name"]: Path(x["artifact"]) for x in s["stages"] if x["artifact"]}
    d = json.loads((art["distill"] / "manifest.json").read_text())
    assert d["pairs_kept"] >= 20 and d["train"]["reward_accuracy_last"] is not None
    f = json.loads((art["fold"] / "manifest.json").read_text())
    assert f["folded"] == ["distill", "introspect"] and f["combined_adapter"]["max_abs_diff_vs_fold"] < 1e-4
    assert 0 <= s["metrics"]["persona_trait_score"] <= 100
    print({x["name"]: x["seconds"] for x in s["stages"]}, "reward_accuracy_last", d["train"]["reward_accuracy_last"])
