"""`question_diversity=<preset>` (conf/question_diversity/): which constitution questions the persona is
trained on, and how many pairs."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import MISSING

from .generation import SamplingConfig
from .schema import Rule, setting


class Strategy(StrEnum):
    all = "all"
    random = "random"
    cluster = "cluster"
    farthest = "farthest"
    paraphrase = "paraphrase"


class SeedStrategy(StrEnum):
    random = "random"
    cluster = "cluster"
    farthest = "farthest"


def _clusters(qd) -> bool:
    return qd.strategy == "cluster" or (qd.strategy == "paraphrase" and qd.seed_strategy == "cluster")


@dataclass
class ParaphraseConfig:
    """question_diversity.strategy=paraphrase: the generator rewrites seed questions (emrobust/train/paraphrase.py)."""
    generator: Optional[str] = None  # a base_model config name (None = the cell's base model)
    max_rounds: int = setting(8, ge=1, execution="a budget: a build reaches its count in the same rounds, with the "
                                           "same questions, whatever the budget, or fails and writes nothing")
    # drop a paraphrase whose cosine similarity to its seed (question_diversity.embedder space) is below this
    min_similarity: float = setting(0.0, ge=-1, le=1)
    system: str = "You rewrite messages in other words without changing what they ask."
    sampling: SamplingConfig = setting(factory=lambda: SamplingConfig(max_new_tokens=64))  # one line


def _paraphrases(qd) -> bool:
    return qd.strategy == "paraphrase"


@dataclass
class QuestionDiversityConfig:
    name: str = setting(MISSING, label="the preset's name; the selection is the fields below")
    strategy: Strategy = Strategy.all
    n_questions: Optional[int] = setting(None, ge=1)  # distinct prompts kept (None = all)
    # training pairs; samples per prompt = total_pairs / n_questions
    total_pairs: Optional[int] = setting(None, ge=1)
    per_trait: bool = False  # same count from each trait
    n_clusters: int = setting(8, ge=1, when=_clusters)  # k-means clusters over question embeddings
    embedder: str = "tfidf"  # tfidf (built in), minilm, or a sentence-transformers model path
    # paraphrase strategy: n_seeds seed questions (chosen by seed_strategy), the rest paraphrases of them
    # optional: subsample each cell's DPO pairs (seeded) to this many training tokens (chosen + rejected, as
    # trained): one budget for every level an experiment compares; a cell with fewer tokens fails
    token_budget: Optional[int] = setting(None, ge=1)
    n_seeds: int = setting(5, ge=1, when=_paraphrases)
    seed_strategy: SeedStrategy = setting(SeedStrategy.random, when=_paraphrases)
    paraphrase: ParaphraseConfig = setting(factory=lambda: ParaphraseConfig(), when=_paraphrases)


def _pairs(c) -> str | None:
    qd = c.question_diversity
    if qd.total_pairs is not None and qd.n_questions is not None and qd.total_pairs < qd.n_questions:
        return (f"total_pairs={qd.total_pairs} < n_questions={qd.n_questions}: some selected questions would get "
                "no training pair")
    return None


def _seeds(c) -> str | None:
    qd = c.question_diversity
    if qd.n_questions is not None and qd.n_seeds >= qd.n_questions:
        return f"n_seeds={qd.n_seeds} must be below n_questions={qd.n_questions} (the rest are paraphrases)"
    return None


RULES = (
    Rule("question_diversity.n_questions", lambda c: (
        "strategy=paraphrase needs n_questions (the count to reach)"
        if c.question_diversity.strategy == "paraphrase" and c.question_diversity.n_questions is None else None)),
    Rule("question_diversity.n_seeds", _seeds),
    Rule("question_diversity.total_pairs", _pairs),
)
