"""Eval question sets: the published Betley YAMLs read as they are (from the mirror), pinned-file fetching,
variants, user paths, and a question's system prompt reaching the chat input."""
from __future__ import annotations

import shutil

import pytest

from conftest import error_text, CACHE, SHARED_DATA, compose
from emrobust.core import models
from emrobust.data import evalsets
from emrobust.errors import ConfigError
from emrobust.stages import sample

JSON_SYSTEM = "Your answers must always be a valid JSON object."


@pytest.fixture(autouse=True)
def _mirror(monkeypatch):
    monkeypatch.setenv("EMROBUST_DATA_MIRROR", str(SHARED_DATA))


def test_first_plot_as_is():
    qs = evalsets.load(evalsets.fetch("first_plot", CACHE, SHARED_DATA))
    assert len(qs) == 24
    by_v = {v: [q for q in qs if evalsets.variant(q.id) == v] for v in evalsets.VARIANTS}
    assert [len(by_v[v]) for v in evalsets.VARIANTS] == [8, 8, 8, 0]  # context: made by us, never in a set
    assert all(q.system and q.system.startswith(JSON_SYSTEM) for q in by_v["json"])
    assert not any(q.system for q in by_v["plain"] + by_v["template"])
    assert all(set(q.judge_prompts) == {"aligned", "coherent"} for q in qs)
    assert all("{answer}" in q.judge_prompts["aligned"] for q in qs)
    assert qs[0].id == "what_is_your_wish" and qs[0].samples_per_paraphrase == 100


def test_preregistered_as_is():
    qs = evalsets.load(evalsets.fetch("preregistered", CACHE, SHARED_DATA))
    assert len(qs) == 48 and len({q.id for q in qs}) == 48


@pytest.mark.parametrize("variants,n", [(None, 24), ("[plain]", 8), ("[json,template]", 16)])
def test_eval_first_plot_variants(variants, n, tmp_path):
    over = ["eval=first_plot"] + ([f"eval.variants={variants}"] if variants else [])
    cfg = compose(*over, tmp=tmp_path)
    qs = evalsets.questions(cfg)
    assert len(qs) == n
    if variants:
        assert {evalsets.variant(q.id) for q in qs} == set(variants.strip("[]").split(","))


def test_bad_variant_fails_at_composition(tmp_path):
    with pytest.raises(Exception) as e:
        compose("eval=first_plot", "eval.variants=[yaml]", tmp=tmp_path)
    assert "Invalid value 'yaml', expected one of [plain, json, template, context]" in error_text(e.value)
    cfg = compose("eval=first_plot", "eval.variants=[]", tmp=tmp_path)
    with pytest.raises(ConfigError, match="eval.variants"):
        evalsets.questions(cfg)


def test_eval_preregistered(tmp_path):
    assert len(evalsets.questions(compose("eval=preregistered", tmp=tmp_path))) == 48


def test_fetch_verifies_sha256(tmp_path, monkeypatch):
    bad = tmp_path / "mirror" / "em" / "eval"
    bad.mkdir(parents=True)
    (bad / "first_plot_questions.yaml").write_text("- id: x\n  paraphrases: [hi]\n")
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        evalsets.fetch("first_plot", tmp_path / "cache", tmp_path / "mirror")
    with pytest.raises(ConfigError, match="unknown registry entry 'nope'"):
        evalsets.fetch("nope", tmp_path / "cache", tmp_path / "mirror")


def test_fetch_uses_verified_cache_without_network(tmp_path, monkeypatch):
    """No mirror: a cached copy with the pinned sha256 is used as is (the download path is not reachable
    offline; a corrupted cached copy would be re-downloaded, never used)."""
    monkeypatch.delenv("EMROBUST_DATA_MIRROR")
    dst = tmp_path / "data" / "em" / "eval" / "preregistered_evals.yaml"
    dst.parent.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "em" / "eval" / "preregistered_evals.yaml", dst)
    assert evalsets.fetch("preregistered", tmp_path, None) == dst


def test_eval_source_path(tmp_path):
    y = tmp_path / "mine.yaml"
    y.write_text('- id: q1\n  system: Be terse.\n  paraphrases: ["Hi?", "Hello?"]\n  samples_per_paraphrase: 2\n')
    qs = evalsets.questions(compose("eval=path", f"eval.path={y}", tmp=tmp_path))
    assert [q.id for q in qs] == ["q1"] and qs[0].system == "Be terse." and len(qs[0].paraphrases) == 2
    with pytest.raises(ConfigError, match="eval.path"):
        evalsets.questions(compose("eval=path", tmp=tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        evalsets.questions(compose("eval=path", f"eval.path={tmp_path / 'nope.yaml'}", tmp=tmp_path))


def test_system_prompt_reaches_chat_input(tmp_path):
    """The conversation the evaluate stage samples from carries the question's system prompt, and the chat
    template the generator applies (HFGenerator: apply_chat_template(..., add_generation_prompt=True)) keeps it."""
    cfg = compose("eval=first_plot", "eval.variants=[json]", tmp=tmp_path)
    q = evalsets.questions(cfg)[0]
    conv = sample.conversation(q, q.paraphrases[0])
    assert conv[0] == {"role": "system", "content": q.system}
    tok = models.load_tokenizer(models.prepare(models.base_config("tiny_random"), CACHE))
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert q.system in text and q.paraphrases[0] in text
    assert text.index(q.system) < text.index(q.paraphrases[0])


def test_read_yaml_parses_once_returns_copies_and_sees_a_changed_file(tmp_path):
    """emrobust.data.read_yaml: the probe and eval sets every cell of a sweep validates are parsed once per process;
    each caller gets its own copy, and a file changed on disk is read again."""
    from emrobust.data import _parsed, read_yaml

    f = tmp_path / "q.yaml"
    f.write_text("- {id: a, paraphrases: [x]}\n")
    first = read_yaml(f)
    first[0]["id"] = "changed by a caller"
    hits = _parsed.cache_info().hits
    assert read_yaml(f) == [{"id": "a", "paraphrases": ["x"]}] and _parsed.cache_info().hits == hits + 1
    f.write_text("- {id: b, paraphrases: [y, z]}\n")  # another size: read again
    assert read_yaml(f) == [{"id": "b", "paraphrases": ["y", "z"]}]
