"""Question-selection strategies and diversity measures (no models needed)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from emrobust.train import diversity as D
from emrobust.data import constitutions
from emrobust.errors import ConfigError


def qd(strategy: str, n: int | None = 12, per_trait: bool = False, n_clusters: int = 8):
    return OmegaConf.create(dict(strategy=strategy, n_questions=n, per_trait=per_trait, n_clusters=n_clusters,
                                 embedder="tfidf"))


@pytest.fixture(scope="module")
def demo():
    c = constitutions.load(constitutions.BUILTIN / "demo.yaml")
    qs = c.questions()
    return [q for _, q in qs], [t for t, _ in qs]


# ---------------------------------------------------------------- measures
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_vendi_identical_is_one(k):
    v = np.random.default_rng(0).normal(size=16)
    emb = np.tile(v / np.linalg.norm(v), (k, 1))
    assert D.vendi(emb) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_vendi_orthonormal_is_k(k):
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
    emb = q.T[:k]  # k orthonormal rows
    assert D.vendi(emb) == pytest.approx(float(k), rel=1e-6)


def test_vendi_between_and_empty():
    # two groups of identical vectors, orthogonal to each other, equal sizes -> exactly 2
    e = np.eye(4)
    emb = np.stack([e[0], e[0], e[0], e[1], e[1], e[1]])
    assert D.vendi(emb) == pytest.approx(2.0, rel=1e-6)
    # unequal group sizes (2:1) -> exp(H(2/3, 1/3))
    emb = np.stack([e[0], e[0], e[1]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert D.vendi(emb) == pytest.approx(math.exp(h), rel=1e-6)
    assert D.vendi(np.zeros((0, 4))) == 0.0


def test_mean_pairwise_cosine_distance_hand():
    s = 1 / math.sqrt(2)
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])
    # pairs: (e1,e2) -> 1, (e1,v) -> 1-s, (e2,v) -> 1-s
    assert D.mean_pairwise_cosine_distance(emb) == pytest.approx((1 + 2 * (1 - s)) / 3)
    assert D.mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert D.mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0)
    assert D.mean_pairwise_cosine_distance(emb[:1]) == 0.0


def test_distinct_n_hand():
    texts = ["The cat, the CAT!", "a dog"]
    # unigrams: the cat the cat a dog -> 4 distinct / 6
    assert D.distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams (not across texts): (the,cat) (cat,the) (the,cat) (a,dog) -> 3 / 4
    assert D.distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams: (the,cat,the) (cat,the,cat) -> 2/2; "a dog" has none
    assert D.distinct_n(texts, 3) == pytest.approx(1.0)
    assert D.distinct_n(["one"], 2) == 0.0
    assert D.distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)


def test_embed_tfidf_unit_norm(demo):
    texts, _ = demo
    emb = D.embed(texts)
    assert emb.shape[0] == len(texts)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # identical texts embed identically; a text embeds closest to itself
    e2 = D.embed(["alpha beta", "alpha beta", "gamma delta"])
    assert np.allclose(e2[0], e2[1]) and abs(e2[0] @ e2[2]) < 1e-12


# ---------------------------------------------------------------- selection
@pytest.mark.parametrize("strategy", ["random", "cluster", "farthest"])
def test_select_unique_reproducible_seeded(demo, strategy):
    texts, traits = demo
    cfg = qd(strategy, 12)
    a = D.select(texts, traits, cfg, seed=0)
    assert len(a) == 12 and len(set(a)) == 12
    assert all(0 <= i < len(texts) for i in a)
    assert D.select(texts, traits, cfg, seed=0) == a
    others = [D.select(texts, traits, cfg, seed=s) for s in (1, 2)]
    assert any(o != a for o in others), f"{strategy}: selection does not depend on the seed"


@pytest.mark.parametrize("strategy", ["random", "cluster", "farthest"])
def test_select_per_trait_balanced(demo, strategy):
    texts, traits = demo
    n_traits = len(set(traits))
    for n in (10, 12, 13):
        idx = D.select(texts, traits, qd(strategy, n, per_trait=True), seed=3)
        assert len(idx) == n and len(set(idx)) == n
        counts = Counter(traits[i] for i in idx)
        assert set(counts) == set(range(n_traits))
        assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_select_all_and_oversized(demo):
    texts, traits = demo
    everything = list(range(len(texts)))
    assert D.select(texts, traits, qd("all", None), seed=0) == everything
    assert D.select(texts, traits, qd("random", None), seed=0) == everything
    assert D.select(texts, traits, qd("farthest", len(texts)), seed=0) == everything
    # more than the constitution holds is an error, never a silent cap (every cell of a design selects the same count)
    with pytest.raises(ConfigError, match="n_questions=65 but the constitution has 60 questions"):
        D.select(texts, traits, qd("farthest", len(texts) + 5), seed=0)
    with pytest.raises(ValueError, match="strategy"):
        D.select(texts, traits, qd("bogus"), seed=0)


def test_diversity_ordering_on_demo(demo):
    """The controlled variable: at a fixed count, cluster < random < farthest in Vendi score."""
    texts, traits = demo
    emb = D.embed(texts)
    seeds = range(5)
    mean = {
        s: float(np.mean([D.vendi(emb[D.select(texts, traits, qd(s, 12), seed=k, emb=emb)]) for k in seeds]))
        for s in ("cluster", "random", "farthest")
    }
    assert mean["cluster"] < mean["random"] < mean["farthest"], mean
    # same ordering for mean pairwise cosine distance
    mpcd = {
        s: float(np.mean([D.mean_pairwise_cosine_distance(emb[D.select(texts, traits, qd(s, 12), seed=k, emb=emb)])
                          for k in seeds]))
        for s in ("cluster", "random", "farthest")
    }
    assert mpcd["cluster"] < mpcd["random"] < mpcd["farthest"], mpcd


def test_measure_fields(demo):
    texts, traits = demo
    idx = D.select(texts, traits, qd("random", 12), seed=0)
    emb = D.embed(texts)[idx]
    m = D.measure([texts[i] for i in idx], [traits[i] for i in idx], emb, n_traits=5)
    assert m["n_questions"] == 12
    assert 1.0 <= m["vendi"] <= 12.0 + 1e-9
    assert m["traits_covered"] == len({traits[i] for i in idx})
    assert m["trait_coverage"] == pytest.approx(m["traits_covered"] / 5)


# ---------------------------------------------------------------- data quantity
@pytest.mark.parametrize("n,total", [(12, 100), (60, 60), (7, 3), (5, 1000), (13, 27)])
def test_samples_per_question(n, total):
    s = D.samples_per_question(n, total, default=99)
    assert len(s) == n and sum(s) == total
    assert max(s) - min(s) <= 1
    assert all(x >= 0 for x in s)


def test_samples_per_question_default():
    assert D.samples_per_question(4, None, default=3) == [3, 3, 3, 3]


@pytest.mark.parametrize("strategy", ["random", "cluster", "farthest"])
def test_select_per_trait_fewer_than_traits(demo, strategy):
    texts, traits = demo
    idx = D.select(texts, traits, qd(strategy, 3, per_trait=True), seed=0)
    assert len(idx) == 3 and len({traits[i] for i in idx}) == 3
