"""The persona classifier: one instrument per (persona, base model) that says whether an answer shows the persona,
without a judge (OCT measures persona robustness with a classifier).

Training data (the `classifier` stage): the base model's answers to non-reserved constitution questions with the
persona's system prompt (label 1) and without it (label 0), sampled as the persona check samples (eval.persona's
temperature, top_p and max_new_tokens). Each answer (no question, no system prompt) is embedded with a kept sentence
encoder (`eval.persona.classifier.embedder`, all-MiniLM-L6-v2 by default; emrobust.train.diversity) and a logistic
regression (scikit-learn, L2, `C`) is fitted on the training questions' answers. A `heldout_fraction` of the
questions (both of their answers) is held out: F1 (at probability 0.5) and AUROC on them, each with a percentile
bootstrap interval over held-out questions (a question's two answers resampled together, so both classes are always
present). The base model's own rate on the reserved questions (no system prompt, the persona check's sampling) is
the level `persona_rate` falls back to when the persona is gone.

Validity (`valid`): the lower bound of the AUROC interval is at least `eval.persona.classifier.min_auroc` (0.8).
An invalid classifier's numbers are still recorded, flagged `persona_classifier_valid: false`, and nothing is
computed from them (`persona_half_life` is left empty, saying why).

`persona_rate` of a model: the share of its persona answers (sample's persona_answers.jsonl) classified as the
persona (probability >= 0.5), with a Wilson interval.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

THRESHOLD = 0.5  # probability at or above which an answer is classified as showing the persona


def embed(texts: list[str], embedder: str) -> np.ndarray:
    from ..train import diversity  # lazy: up a floor

    if embedder == "tfidf":
        raise ValueError("the persona classifier needs a kept encoder (tfidf is fitted per call): use minilm or a "
                         "sentence-transformers path")
    return diversity.embed(list(texts), embedder)


def fit(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of an L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression  # lazy: slow import

    lr = LogisticRegression(C=float(c), max_iter=2000, random_state=seed).fit(x, y)
    return lr.coef_[0].astype(float), float(lr.intercept_[0])


def probabilities(x: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(np.asarray(x) @ np.asarray(coef) + intercept)))


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import f1_score  # lazy: slow import

    return float(f1_score(y, (p >= THRESHOLD).astype(int), zero_division=0))


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score  # lazy: slow import

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")


def heldout_scores(groups: np.ndarray, y: np.ndarray, p: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    """F1 and AUROC on held-out answers, each with a 95% percentile bootstrap interval over `groups` (the questions:
    a question's answers are resampled together)."""
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    f1s, aucs = [], []
    for _ in range(int(n_bootstrap)):
        idx = np.concatenate([members[i] for i in rng.integers(len(ids), size=len(ids))])
        f1s.append(_f1(y[idx], p[idx]))
        aucs.append(_auroc(y[idx], p[idx]))

    def ci(v):
        v = np.asarray(v, dtype=float)
        v = v[~np.isnan(v)]
        return (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) if len(v) else (None, None)

    (f_lo, f_hi), (a_lo, a_hi) = ci(f1s), ci(aucs)
    return {"f1": _f1(y, p), "f1_lo": f_lo, "f1_hi": f_hi, "auroc": _auroc(y, p), "auroc_lo": a_lo,
            "auroc_hi": a_hi, "n_heldout": int(len(y)), "n_heldout_questions": int(len(ids))}


def valid(auroc_lo, min_auroc: float) -> bool:
    """The declared validity rule: the AUROC's lower bound reaches `min_auroc` (no bound: not valid)."""
    try:
        lo = float(auroc_lo)
    except (TypeError, ValueError):
        return False
    return bool(lo == lo and lo >= float(min_auroc))


def rate(p: np.ndarray) -> dict:
    """The share of answers classified as the persona, with its Wilson interval."""
    from .metrics import wilson_interval  # lazy: slow import

    k, n = int((np.asarray(p) >= THRESHOLD).sum()), int(len(p))
    lo, hi = wilson_interval(k, n) if n else (None, None)
    return {"rate": k / n if n else None, "lo": lo, "hi": hi, "n": n}


def save(out: Path, coef: np.ndarray, intercept: float, info: dict) -> None:
    np.savez(out / "classifier.npz", coef=coef, intercept=np.array([intercept]))
    (out / "classifier.json").write_text(json.dumps(info, indent=1, default=float))


def load(path: Path) -> tuple[np.ndarray, float, dict]:
    """(coefficients, intercept, classifier.json) of a classifier artifact."""
    with np.load(Path(path) / "classifier.npz") as z:
        coef, intercept = z["coef"], float(z["intercept"][0])
    return coef, intercept, json.loads((Path(path) / "classifier.json").read_text())


def apply(path: Path, texts: list[str]) -> np.ndarray:
    """The persona probability of each text under the classifier artifact at `path`."""
    coef, intercept, info = load(path)
    return probabilities(embed(texts, info["embedder"]), coef, intercept)


def measures(path: Path, texts: list[str], probs, min_auroc: float) -> dict:
    """The flat metrics of one evaluated model's persona answers (`probs`: their persona probabilities under the
    classifier at `path`): `persona_rate` (+ `_lo`/`_hi`) and the classifier's own figures and validity."""
    _, _, info = load(path)
    r = rate(np.asarray(probs)) if len(texts) else {"rate": None, "lo": None, "hi": None, "n": 0}
    h, b = info["heldout"], info["base"]
    return {"persona_rate": r["rate"], "persona_rate_lo": r["lo"], "persona_rate_hi": r["hi"], "persona_rate_n": r["n"],
            "persona_classifier_f1": h["f1"], "persona_classifier_f1_lo": h["f1_lo"],
            "persona_classifier_f1_hi": h["f1_hi"], "persona_classifier_auroc": h["auroc"],
            "persona_classifier_auroc_lo": h["auroc_lo"], "persona_classifier_auroc_hi": h["auroc_hi"],
            "persona_classifier_valid": valid(h["auroc_lo"], min_auroc),
            "persona_classifier_min_auroc": float(min_auroc),
            "persona_classifier_base_rate": b["rate"], "persona_classifier_base_rate_lo": b["lo"],
            "persona_classifier_base_rate_hi": b["hi"], "persona_classifier_embedder": info["embedder"]}
