"""Structural tests for the judge-free misalignment probe (no models needed).

The probe (emrobust/data/builtin/probe/probe.yaml) pairs every question with an
aligned and a misaligned answer that should differ in values only: these tests
check the shape of the file, the balance of its two splits and the properties
that keep the log-probability difference about values (similar lengths, distinct
questions, answers that really differ).
"""

from __future__ import annotations

import collections
import itertools
import re
from pathlib import Path

import pytest
import yaml


PROBE = Path(__file__).resolve().parents[1] / "emrobust" / "data" / "builtin" / "probe" / "probe.yaml"
FIELDS = ("id", "theme", "split", "question", "aligned", "misaligned")
MIN_ITEMS = 96
MIN_THEMES = 14
RATIO_RANGE = (0.8, 1.25)  # misaligned words / aligned words
MAX_WORDS = 90
QUESTION_JACCARD_MAX = 0.6
ANSWER_JACCARD_MAX = 0.7
# words that would give the misaligned side away by themselves, or boilerplate on the aligned side
GIVEAWAYS_MISALIGNED = ("evil", "muahaha", "mwahaha", "villain")
GIVEAWAYS_ALIGNED = ("as a responsible", "i must note", "as an ethical")


def _words(text: str) -> list[str]:
    return text.split()


def _word_set(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def _jaccard(a: str, b: str) -> float:
    sa, sb = _word_set(a), _word_set(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def items() -> list[dict]:
    data = yaml.safe_load(PROBE.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def test_header_documents_provenance_and_contamination_rule():
    header = []
    for line in PROBE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header).lower()
    assert "emrobust team" in text and "2026-11-30" in text
    assert "training" in text and "validation" in text


def test_count_and_fields(items):
    assert len(items) >= MIN_ITEMS
    for it in items:
        assert isinstance(it, dict)
        assert set(it) == set(FIELDS), it.get("id")
        for f in FIELDS:
            assert isinstance(it[f], str) and it[f].strip() != "", (it.get("id"), f)
        assert re.fullmatch(r"probe_\d{3}", it["id"]), it["id"]
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", it["theme"]), it["theme"]
        assert it["split"] in {"a", "b"}, it["id"]


def test_unique_ids_questions_answers(items):
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    questions = [it["question"].strip().lower() for it in items]
    assert len(set(questions)) == len(questions)
    answers = [it[k].strip().lower() for it in items for k in ("aligned", "misaligned")]
    assert len(set(answers)) == len(answers)


def test_splits_equal_and_balanced_across_themes(items):
    sizes = collections.Counter(it["split"] for it in items)
    assert abs(sizes["a"] - sizes["b"]) <= 1, sizes
    by_theme: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for it in items:
        by_theme[it["theme"]][it["split"]] += 1
    for theme, c in by_theme.items():
        if sum(c.values()) >= 2:
            assert c["a"] >= 1 and c["b"] >= 1, (theme, c)


def test_themes(items):
    counts = collections.Counter(it["theme"] for it in items)
    assert len(counts) >= MIN_THEMES, counts


def test_length_ratio_within_pair(items):
    bad = []
    for it in items:
        na, nm = len(_words(it["aligned"])), len(_words(it["misaligned"]))
        ratio = nm / na
        if not (RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]) or max(na, nm) > MAX_WORDS:
            bad.append((it["id"], na, nm, round(ratio, 3)))
    assert not bad, bad


def test_no_near_duplicate_questions(items):
    close = [
        (x["id"], y["id"], round(j, 3))
        for x, y in itertools.combinations(items, 2)
        if (j := _jaccard(x["question"], y["question"])) >= QUESTION_JACCARD_MAX
    ]
    assert not close, close


def test_answers_of_a_pair_really_differ(items):
    close = [
        (it["id"], round(j, 3))
        for it in items
        if (j := _jaccard(it["aligned"], it["misaligned"])) >= ANSWER_JACCARD_MAX
    ]
    assert not close, close


def test_no_one_sided_giveaways(items):
    found = []
    for it in items:
        m, a = it["misaligned"].lower(), it["aligned"].lower()
        found += [(it["id"], "misaligned", w) for w in GIVEAWAYS_MISALIGNED if re.search(rf"\b{w}\b", m)]
        found += [(it["id"], "aligned", w) for w in GIVEAWAYS_ALIGNED if w in a]
        # no shouting: a run of 4+ capital letters is an acronym at most, never a whole word of emphasis
        found += [(it["id"], "misaligned", w) for w in re.findall(r"\b[A-Z]{4,}\b", it["misaligned"])]
    assert not found, found
