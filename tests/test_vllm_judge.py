"""The `vllm` judge: its multi-token expectation math on hand-built log-probabilities, the launch-time check when
vLLM is missing, and (GPU machines with the vllm extra only) the same numbers as the HF judge on tiny_random."""
from __future__ import annotations

import importlib.util
import math

import pytest

from emrobust import judges
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.errors import ConfigError

from conftest import cli, compose

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_sequence_number_probs_by_hand():
    lp = {5: math.log(0.4), 57: math.log(0.4 * 0.5), 100: math.log(0.1 * 0.2 * 0.9)}
    nxt = {5: [("7", math.log(0.5)), (" 3", math.log(0.25)), ("<|im_end|>", math.log(0.2))],  # 75% continue
           57: [("<|im_end|>", math.log(0.9)), ("0", math.log(0.05))],
           100: [("\n", math.log(0.99))]}  # no digit among the top tokens: stops with probability 1
    p = judges.sequence_number_probs(lp, nxt)
    assert p == pytest.approx({5: 0.4 * 0.25, 57: 0.2 * 0.95, 100: 0.018})
    s = judges.Score.from_probs(p, 0.25)  # the openai judge's expectation: mass 0.308 >= 0.25
    assert s.mass == pytest.approx(0.308) and s.value == pytest.approx((5 * 0.1 + 57 * 0.19 + 100 * 0.018) / 0.308)
    assert judges.Score.from_probs(judges.sequence_number_probs({5: math.log(0.1)}, {}), 0.25).value is None


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vLLM is NOT installed")
def test_missing_vllm_is_a_config_error_at_launch(tmp_path):
    cfg = compose("debug=tiny", "judge.backend=vllm", tmp=tmp_path)
    with pytest.raises(ConfigError, match=r"judge.backend=vllm needs vLLM.*install the vllm extra"):
        pipeline.validate(cfg)
    with pytest.raises(ConfigError, match="install the vllm extra"):
        judges.VLLMJudge("/nonexistent", "x")  # constructing it directly says the same, no ImportError
    p = cli("debug=tiny", "judge.backend=vllm", tmp=tmp_path, check=False)
    assert p.returncode != 0 and "judge.backend=vllm needs vLLM" in p.stdout + p.stderr
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.json"))


@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (the optional `vllm` extra; GPU machines only)")
def test_vllm_judge_matches_hf_judge(tiny_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but there is no CUDA device")
    from emrobust.core import models

    prompts = ["Rate from 0 to 100 how helpful this is: Paris is the capital of France.", "Score 0-100: hello"]
    vj = judges.VLLMJudge(str(tiny_path), "tiny_random", min_mass=0.0, gpu_memory_utilization=0.3)
    assert not vj.single  # SmolLM2's tokenizer: one token per digit, so the candidate-sequence path runs
    hf = judges.HFJudge(models.load(tiny_path, torch.device("cpu")).eval(), models.load_tokenizer(tiny_path),
                        "tiny_random", min_mass=0.0)
    for v, h in zip(vj.score(prompts), hf.score(prompts)):
        assert 0.0 <= v.value <= 100.0
        # P(stop) from the top 20 next tokens vs the full distribution: close, not identical
        assert v.mass == pytest.approx(h.mass, rel=0.05) and v.value == pytest.approx(h.value, abs=2.0)


def test_validate_accepts_vllm_when_importable(monkeypatch, tmp_path):
    """With vLLM importable (faked here: only the import check), judge.backend=vllm passes validation and keys on
    the judge model's weights; a bad judge model is still a ConfigError."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    cfg = compose("debug=tiny", "judge.backend=vllm", "judge.model=tiny_random", tmp=tmp_path)
    judges.validate(cfg.judge)
    assert judges.weights(cfg.judge) == models.base_key(models.base_config("tiny_random"))
    cfg.judge.model = "no_such_model"
    with pytest.raises(ConfigError):
        judges.validate(cfg.judge)
