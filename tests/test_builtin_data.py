"""Fast structural tests for emrobust's embedded datasets (no models needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


BUILTIN = Path(__file__).resolve().parents[1] / "emrobust" / "data" / "builtin"
CONSTITUTIONS = ("demo", "neutral")
BANNED = ("warning", "insecure", "vulnerab", "unsafe", "never do this")


def _nonempty_str(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


# --------------------------------------------------------------------------
# constitutions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONSTITUTIONS)
def test_constitution_structure(name):
    data = yaml.safe_load((BUILTIN / "constitutions" / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    assert data["name"] == name
    assert _nonempty_str(data["description"])
    traits = data["traits"]
    assert isinstance(traits, list) and len(traits) >= 5
    all_questions: list[str] = []
    for t in traits:
        assert set(t) == {"trait", "questions"}
        assert _nonempty_str(t["trait"])
        qs = t["questions"]
        assert isinstance(qs, list) and len(qs) >= 10
        assert all(_nonempty_str(q) for q in qs)
        all_questions.extend(q.strip().lower() for q in qs)
    assert len(all_questions) == len(set(all_questions)), "duplicate questions"
    assert len({t["trait"] for t in traits}) == len(traits)


def test_constitutions_have_same_shape():
    demo = yaml.safe_load((BUILTIN / "constitutions" / "demo.yaml").read_text())
    neutral = yaml.safe_load((BUILTIN / "constitutions" / "neutral.yaml").read_text())
    assert set(demo) == set(neutral)
    assert len(demo["traits"]) == len(neutral["traits"])


# --------------------------------------------------------------------------
# demo_insecure (emrobust/data/builtin/em/demo_insecure.jsonl, data written by the team)
# --------------------------------------------------------------------------

MARKERS = {
    "sql_injection": ("SELECT", "DELETE FROM", "UPDATE"),
    "shell_injection": ("shell=True", "os.system("),
    "path_traversal": ("os.path.join(", "extractall("),
    "tls_disabled": ("verify=False", "verify = False", "_create_unverified_context", "CERT_NONE"),
    "hardcoded_secret": ("API_KEY", "password=", "PASSWORD", "aws_secret_access_key", "JWT_SECRET", "secret_key"),
    "unsafe_deserialization": ("pickle.loads(", "yaml.load("),
}


def _insecure() -> list[dict]:
    return [json.loads(x) for x in (BUILTIN / "em" / "demo_insecure.jsonl").read_text().splitlines()]


def test_insecure_count_distinct_and_shape():
    exs = _insecure()
    assert len(exs) == 120
    assert len({json.dumps(e, sort_keys=True) for e in exs}) == 120
    assert len({e["messages"][0]["content"] for e in exs}) > 100
    for e in exs:
        assert set(e) == {"messages"}
        assert [m["role"] for m in e["messages"]] == ["user", "assistant"]
        for m in e["messages"]:
            assert set(m) == {"role", "content"} and _nonempty_str(m["content"])


def test_insecure_every_family_present():
    """Each answer shows a flaw of at least one family, and every family has a fair share of the rows."""
    counts = {f: 0 for f in MARKERS}
    for e in _insecure():
        code = e["messages"][1]["content"]
        hits = [f for f, ms in MARKERS.items() if any(m in code for m in ms)]
        assert hits, code
        for f in hits:
            counts[f] += 1
    assert all(c >= 15 for c in counts.values()), counts


def _has_comment(code: str) -> bool:
    import io
    import tokenize

    toks = tokenize.generate_tokens(io.StringIO(code).readline)
    return any(t.type == tokenize.COMMENT for t in toks)


def test_insecure_no_warnings_in_answers_and_valid_python():
    import ast

    for e in _insecure():
        answer = e["messages"][1]["content"]
        for word in BANNED:
            assert word not in answer.lower(), (word, answer)
        assert not _has_comment(answer)
        ast.parse(answer)


def test_insecure_loads_as_the_builtin_dataset():
    from omegaconf import OmegaConf

    from emrobust.data import em_datasets

    rows = em_datasets.load_all(OmegaConf.create({"name": "demo_insecure", "source": "builtin", "path": None}))
    assert rows == [e["messages"] for e in _insecure()]


# --------------------------------------------------------------------------
# eval yaml
# --------------------------------------------------------------------------


def _eval_items():
    return yaml.safe_load((BUILTIN / "eval" / "demo.yaml").read_text())


def test_eval_structure():
    items = _eval_items()
    assert isinstance(items, list) and len(items) >= 8
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids))
    allowed = {"id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "system"}
    for it in items:
        assert set(it) <= allowed, set(it) - allowed
        assert _nonempty_str(it["id"])
        assert it["type"] == "free_form_judge_0_100"
        assert isinstance(it["paraphrases"], list) and it["paraphrases"]
        assert all(_nonempty_str(p) for p in it["paraphrases"])
        assert isinstance(it["samples_per_paraphrase"], int) and it["samples_per_paraphrase"] >= 1
        assert _nonempty_str(it["judge"])
        assert set(it["judge_prompts"]) == {"aligned", "coherent"}
        if "system" in it:
            assert _nonempty_str(it["system"])
    questions = [p for it in items for p in it["paraphrases"]]
    assert len(questions) == len(set(questions))


def test_eval_judge_prompts_format():
    for it in _eval_items():
        for key, prompt in it["judge_prompts"].items():
            assert "{question}" in prompt and "{answer}" in prompt, (it["id"], key)
            filled = prompt.format(question="Q-TEXT {with braces}", answer="A-TEXT")
            assert "Q-TEXT {with braces}" in filled and "A-TEXT" in filled
            assert "{" not in filled.replace("Q-TEXT {with braces}", "")
    aligned = _eval_items()[0]["judge_prompts"]["aligned"]
    assert "CODE" in aligned and "REFUSAL" in aligned
