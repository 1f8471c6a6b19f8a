"""Open Character Training constitutions by name: the pinned registry table, all 11 personas in both formats
read from the real files (through the mirror ../shared/data), and malformed files (clear error, nothing written).
No models are loaded here."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import error_text, CONF, SHARED_DATA, compose
from emrobust.core import keys
from emrobust.engine import pipeline
from emrobust.data import constitutions, registry
from emrobust.errors import ConfigError
from emrobust.stages import questions

PERSONAS = ("sarcasm", "humor", "remorse", "goodness", "loving", "misalignment", "nonchalance", "impulsiveness",
            "sycophancy", "mathematical", "poeticism")
N_TRAITS = {p: 15 if p == "goodness" else 10 for p in PERSONAS}  # checked against the real files


def _const(cfg):
    return constitutions.load_cfg(cfg.trait, cfg.paths)


def _cell(tmp: Path, *overrides: str):
    """A cell whose cache is private to the test and whose mirror is ../shared/data."""
    return compose("debug=tiny", *overrides, f"paths.root={tmp}", f"paths.cache={tmp / 'cache'}",
                   f"paths.data_mirror={SHARED_DATA}")


def test_table_is_pinned_to_sources_md():
    """22 entries (11 personas x 2 formats), raw URLs at the commit in SOURCES.md, sha256 as listed there."""
    sources = (SHARED_DATA / "SOURCES.md").read_text()
    assert registry.OCT_COMMIT in sources
    listed = dict(re.findall(r"`(oct/[^`]+)` \d+ bytes, sha256 `([0-9a-f]{64})`", sources))
    assert set(registry.OCT_PERSONAS) == set(PERSONAS)
    assert len(registry.OCT) == 22
    for e in registry.OCT.values():
        assert e.licence == "MIT" and e.origin == "oct"
        assert e.url == (f"https://raw.githubusercontent.com/maiush/OpenCharacterTraining/{registry.OCT_COMMIT}/"
                         f"constitutions/{e.relpath[4:]}")
        assert listed[e.relpath] == e.sha256, e.name
        assert e.name in registry.ALL
    for p in PERSONAS:
        text = (CONF / "trait" / f"oct_{p}.yaml").read_text()
        assert f"name: oct_{p}" in text and "source: oct_few_shot" in text


@pytest.mark.parametrize("persona", PERSONAS)
def test_persona_loads_in_both_formats(persona, tmp_path):
    """trait=oct_<p> is the few-shot file (5 + 45 questions per trait); trait.source=oct_hand_written the 5."""
    cfg = _cell(tmp_path, f"trait=oct_{persona}")
    few = _const(cfg)
    assert few.source == "oct_few_shot" and few.name == f"oct_{persona}"
    assert len(few.traits) == N_TRAITS[persona]
    assert all(len(t.questions) == 50 for t in few.traits)
    cached = tmp_path / "cache" / "data" / "oct" / "few-shot" / f"{persona}.jsonl"
    assert cached.read_bytes() == (SHARED_DATA / "oct" / "few-shot" / f"{persona}.jsonl").read_bytes()

    hand = _const(_cell(tmp_path, f"trait=oct_{persona}", "trait.source=oct_hand_written"))
    assert hand.source == "oct_hand_written"
    assert len(hand.traits) == N_TRAITS[persona] and all(len(t.questions) == 5 for t in hand.traits)
    assert [t.text for t in hand.traits] == [t.text for t in few.traits]
    # the short spelling is accepted too
    alias = _const(_cell(tmp_path, f"trait=oct_{persona}", "trait.source=hand_written"))
    assert [t.questions for t in alias.traits] == [t.questions for t in hand.traits]


def test_formats_change_the_questions_key(tmp_path):
    k_few = keys.key_config(questions, _cell(tmp_path, "trait=oct_goodness"))["content"]
    k_hand = keys.key_config(questions, _cell(tmp_path, "trait=oct_goodness", "trait.source=oct_hand_written"))["content"]
    assert k_few["constitution_sha256"] == registry.OCT["oct_goodness_few_shot"].sha256
    assert k_hand["constitution_sha256"] == registry.OCT["oct_goodness_hand_written"].sha256


def test_unknown_persona_and_source_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown OCT persona 'kindness'"):
        pipeline.validate(_cell(tmp_path, "trait=oct_goodness", "trait.name=oct_kindness"))
    # an unknown source fails when the cell is composed, listing the valid values
    with pytest.raises(Exception) as e:
        _cell(tmp_path, "trait=oct_goodness", "trait.source=handwritten")
    assert "Invalid value 'handwritten', expected one of [builtin, yaml, oct_few_shot" in error_text(e.value)


def test_corrupted_mirror_is_rejected_and_nothing_cached(tmp_path):
    mirror = tmp_path / "mirror"
    f = mirror / "oct" / "few-shot" / "sarcasm.jsonl"
    f.parent.mkdir(parents=True)
    shutil.copyfile(SHARED_DATA / "oct" / "few-shot" / "sarcasm.jsonl", f)
    b = bytearray(f.read_bytes())
    b[500] ^= 0x01
    f.write_bytes(bytes(b))
    cfg = compose("debug=tiny", "trait=oct_sarcasm", f"paths.root={tmp_path}", f"paths.cache={tmp_path / 'cache'}",
                  f"paths.data_mirror={mirror}")
    with pytest.raises(ConfigError, match="sha256 mismatch") as e:
        pipeline.validate(cfg)
    assert str(f) in str(e.value)
    assert not (tmp_path / "cache" / "data" / "oct").exists() or not any((tmp_path / "cache" / "data" / "oct").rglob("*.jsonl"))


# ---------------------------------------------------------------- malformed user files
def _hand_written(tmp_path: Path, entries) -> Path:
    p = tmp_path / "mine.txt"
    p.write_text(json.dumps(entries))
    return p


GOOD = {"trait": "I am kind.", "questions": ["Q1?", "Q2?", "Q3?", "Q4?", "Q5?"]}


@pytest.mark.parametrize("entries,where,field", [
    ([GOOD, GOOD, {"trait": "I am calm."}], "entry 2", "'questions'"),
    ([GOOD, {"trait": "", "questions": ["Q?"]}], "entry 1", "'trait'"),
    ([GOOD, {"trait": "x", "questions": ["Q?", 3]}], "entry 1", "'questions'"),
    ([GOOD, "not an object"], "entry 1", "object"),
])
def test_malformed_hand_written_names_file_entry_field(tmp_path, entries, where, field):
    p = _hand_written(tmp_path, entries)
    with pytest.raises(ConfigError) as e:
        constitutions.load(p)
    msg = str(e.value)
    assert str(p) in msg and where in msg and field in msg


def test_malformed_few_shot_names_file_line_field(tmp_path):
    p = tmp_path / "mine.jsonl"
    good = json.dumps({"trait": "t", "questions": ["a?"], "additional_questions": ["b?"]})
    p.write_text(good + "\n" + "{not json\n")
    with pytest.raises(ConfigError, match=r"mine.jsonl \(line 2\): invalid JSON"):
        constitutions.load(p)
    p.write_text(good + "\n" + json.dumps({"trait": "t", "additional_questions": ["b?"]}) + "\n")
    with pytest.raises(ConfigError, match=r"mine.jsonl \(line 2\): missing field 'questions'"):
        constitutions.load(p)
    p.write_text(good + "\n" + json.dumps({"trait": "t", "questions": ["a?"], "additional_questions": "b?"}) + "\n")
    with pytest.raises(ConfigError, match=r"line 2\): field 'additional_questions' must be a list"):
        constitutions.load(p)


def test_oct_template_with_empty_slots_is_rejected():
    """OCT's template.txt (empty trait and question slots) is not a usable constitution."""
    with pytest.raises(ConfigError, match=r"template.txt \(entry 0\): missing or empty field 'trait'"):
        constitutions.load(SHARED_DATA / "oct" / "hand-written" / "template.txt")


def test_malformed_user_file_fails_the_cell_before_anything_is_written(tmp_path):
    p = _hand_written(tmp_path, [GOOD, {"trait": "I am calm.", "questions": "Q?"}])
    cfg = _cell(tmp_path, "trait=oct_goodness", "trait.source=oct_hand_written", f"trait.path={p}",
                "trait.name=mine")
    with pytest.raises(ConfigError, match=r"mine.txt \(entry 1\): field 'questions'"):
        pipeline.run_cell(cfg, tmp_path / "run")
    assert not (tmp_path / "artifacts").exists()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "entry 1" in run["error"]


def test_user_file_with_clarification_loads(tmp_path):
    p = _hand_written(tmp_path, [GOOD | {"clarification": "Kind, not naive."}, GOOD | {"trait": "I am calm."}])
    c = constitutions.load(p)
    assert c.traits[0].clarification == "Kind, not naive." and c.traits[1].clarification is None
