"""One interface contract for every generation backend (hf on tiny_random, openai against a real llama.cpp
OpenAI-compatible server, vllm when installed), then the openai backend's own behaviour: finish_reason, n samples
as n requests, seeds, stage keys (endpoint recorded, API key never), config checks, and an evaluate stage whose
answers come from the server."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from emrobust import generation
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.config import GenerationConfig
from emrobust.errors import ConfigError
from emrobust.generation import Generation, Sampling
from emrobust.generation.openai import OpenAIGenerator  # an attribute of the package only once imported

CONVERSATIONS = [
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"},
     {"role": "user", "content": "go on"}],
]
MAX_NEW = 8


def _gcfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(GenerationConfig), kw)


def _served_model(base_url: str) -> str:
    import openai

    return openai.OpenAI(base_url=base_url, api_key="none").models.list().data[0].id


@pytest.fixture(scope="module")
def openai_gen(llama_server):
    return generation.make(_gcfg(backend="openai", base_url=llama_server, model=_served_model(llama_server),
                                 api_key_env=None, concurrency=2, max_retries=2))


@pytest.fixture(params=["hf", "openai", "vllm"])
def backend(request, tiny_path):
    name = request.param
    if name == "hf":
        model = models.load(tiny_path, torch.device("cpu")).eval()
        return generation.make("hf", model, models.load_tokenizer(tiny_path), batch_size=4)
    if name == "openai":
        return request.getfixturevalue("openai_gen")
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (the optional `vllm` extra; GPU machines only)")
    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but there is no CUDA device")
    return generation.make("vllm", str(tiny_path), None)


def _check_shape(out, n_convs: int, n: int, max_new: int):
    assert isinstance(out, list) and len(out) == n_convs
    for row in out:
        assert isinstance(row, list) and len(row) == n
        for g in row:
            assert isinstance(g, Generation)
            assert isinstance(g.text, str) and isinstance(g.n_tokens, int) and isinstance(g.finished, bool)
            assert 0 <= g.n_tokens <= max_new
            assert g.finished or g.n_tokens == max_new  # unfinished = stopped by the token limit


def test_contract_sampled_n(backend):
    out = backend.generate(CONVERSATIONS, Sampling(temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW, seed=0), n=2)
    _check_shape(out, len(CONVERSATIONS), 2, MAX_NEW)


def test_contract_greedy_and_seeded_are_reproducible(backend):
    greedy = Sampling(temperature=0.0, max_new_tokens=MAX_NEW)
    a = backend.generate(CONVERSATIONS, greedy)
    _check_shape(a, len(CONVERSATIONS), 1, MAX_NEW)
    assert a == backend.generate(CONVERSATIONS, greedy)
    s = Sampling(temperature=1.0, max_new_tokens=MAX_NEW, seed=7)
    convs = CONVERSATIONS[:2]
    if isinstance(backend, OpenAIGenerator):
        # llama-cpp-python's server reuses the KV cache of the previous request's longest common prefix and
        # evaluates only the rest, whose floating-point sums differ from a whole prompt's: at temperature 1 the
        # tiny model's sample then depends on which request came before (the two calls below failed about one run
        # in three). One request at a time, after the same one: seeded sampling is reproducible per request.
        convs = CONVERSATIONS[:1]
        backend.generate(convs, s)
    assert backend.generate(convs, s) == backend.generate(convs, s)


def test_contract_empty_input(backend):
    assert backend.generate([], Sampling(max_new_tokens=MAX_NEW)) == []


# ---------------------------------------------------------------- openai backend specifics (real server)
def test_openai_finish_reason_and_usage(openai_gen):
    ((full,),) = openai_gen.generate([[{"role": "user", "content": "Reply with exactly one word: hello"}]],
                                     Sampling(temperature=0.0, max_new_tokens=128))
    assert full.finished is True and 0 < full.n_tokens < 128 and full.text
    ((cut,),) = openai_gen.generate([[{"role": "user", "content": "Write a long essay about Rome."}]],
                                  Sampling(temperature=0.0, max_new_tokens=3))
    assert cut.finished is False and cut.n_tokens == 3


def test_openai_n_samples_are_n_requests_with_distinct_seeds(openai_gen):
    before = openai_gen.requests
    out = openai_gen.generate(CONVERSATIONS[:2], Sampling(temperature=1.0, max_new_tokens=12, seed=3), n=3)
    assert openai_gen.requests - before == 6  # the server ignores n>1: one request per sample
    assert all(len({g.text for g in row}) >= 2 for row in out)  # the samples are different draws
    other = openai_gen.generate(CONVERSATIONS[:2], Sampling(temperature=1.0, max_new_tokens=12, seed=4), n=3)
    assert [[g.text for g in r] for r in out] != [[g.text for g in r] for r in other]


def test_openai_config_checks(monkeypatch):
    monkeypatch.delenv("EMROBUST_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="EMROBUST_TEST_NO_SUCH_KEY"):
        generation.validate(_gcfg(backend="openai", model="m", api_key_env="EMROBUST_TEST_NO_SUCH_KEY"))
    with pytest.raises(ConfigError, match="generation.model"):
        generation.validate(_gcfg(backend="openai", api_key_env=None))
    with pytest.raises(Exception, match=r"Invalid value 'tgi', expected one of \[hf, openai, vllm\]"):
        _gcfg(backend="tgi")
    generation.validate(_gcfg(backend="openai", model="m", api_key_env=None))
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="install the vllm extra"):
            generation.validate(_gcfg(backend="vllm"))
        from emrobust.generation.vllm import VLLMGenerator

        with pytest.raises(ConfigError, match="install the vllm extra"):
            VLLMGenerator("/nonexistent")


def test_stage_keys_record_endpoint_never_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("EMROBUST_TEST_KEY", "sk-secret-123")
    base = ("debug=tiny", "generation.backend=openai", "generation.model=served-model",
            "generation.api_key_env=EMROBUST_TEST_KEY")
    cfg = compose(*base, "generation.base_url=http://127.0.0.1:9/v1", tmp=tmp_path)
    pipeline.validate(cfg)
    nodes = {n.name: n for n in pipeline.plan(cfg)}
    for stage in ("distill", "introspect", "sample"):
        g = nodes[stage].key_config["generation"]
        assert g["backend"] == "openai" and (g["base_url"], g["model"]) == ("http://127.0.0.1:9/v1", "served-model")
        assert "api_key_env" not in g  # the name of the variable is not even in the key, let alone its value
    assert "sk-secret" not in json.dumps([n.key_config for n in nodes.values()], default=str)
    other = {n.name: n.key for n in pipeline.plan(compose(*base, "generation.base_url=http://other:8000/v1",
                                                          tmp=tmp_path))}
    assert other["sample"] != nodes["sample"].key and other["questions"] == nodes["questions"].key
    # an hf cell's generation key holds no endpoint (base_url/model matter only for openai)
    hf = {n.name: n for n in pipeline.plan(compose("debug=tiny", tmp=tmp_path))}
    assert hf["sample"].key_config["generation"] == {"backend": "hf"}
    client = generation.make(cfg.generation).client
    assert client.api_key == "sk-secret-123"


def test_evaluate_stage_answers_from_server(llama_server, tmp_path):
    """A cell whose evaluate stage samples from the served model (judge: hf tiny_random, no judge cache)."""
    overrides = ["debug=tiny", "trait=none", "em_dataset=none", "generation.backend=openai",
                 f"generation.base_url={llama_server}", f"generation.model={_served_model(llama_server)}",
                 "generation.api_key_env=null", "generation.concurrency=2", "judge.cache=false"]
    cfg = compose(*overrides, tmp=tmp_path)
    s = pipeline.run_cell(cfg, tmp_path / "run", overrides)
    assert s["status"] == "ok", s["error"]
    ev = next(x for x in s["stages"] if x["name"] == "sample")
    art = Path(ev["artifact"])
    rows = [json.loads(x) for x in (art / "answers.jsonl").read_text().splitlines()]
    assert rows and all(0 < r["n_tokens"] <= cfg.eval.max_new_tokens for r in rows)
    assert sum(bool(r["answer"].strip()) for r in rows) >= len(rows) - 1  # SmolLM2 answers in words
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["config"]["generation"]["base_url"] == llama_server
