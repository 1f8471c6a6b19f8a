"""The `paraphrase` question-diversity strategy: very low diversity at the same count.

`n_seeds` seed questions are chosen from the pool by `seed_strategy` (`random` by default: representative
situations; `cluster` or `farthest` as for the other strategies, `per_trait` honoured), and the generator
model writes paraphrases of each until the set holds `n_questions` distinct prompts: the seeds themselves plus
`n_questions - n_seeds` paraphrases, spread as evenly as possible over the seeds (seed i gets
``divmod(n_questions - n_seeds, n_seeds)`` paraphrases, the first ones one more).

Each request is one chat: the instruction below with the seed question; each sampled reply is one candidate.
A candidate is the reply's first non-empty line with surrounding quotes and a leading "Paraphrase:"-style
label removed. It is kept when it is non-empty and differs from every seed and every kept paraphrase after
normalisation (lower case, runs of non-alphanumerics collapsed), and, when `paraphrase.min_similarity` > 0, if
its cosine similarity to its seed in the cell's embedder space (`question_diversity.embedder`, each round's
candidates embedded together with the seeds) is at least `min_similarity`, so that a generator drifting off the
seed's situation does not raise the diversity; otherwise it is dropped. Rounds repeat, for
the seeds still short, up to `paraphrase.max_rounds`, the sampling seed being (stage seed + round). If the
set is still short after the last round, the stage FAILS with `ParaphraseShortfall` (no deterministic filler:
a filler would change what the strategy means); raise `max_rounds` or the sampling temperature, or lower
`n_questions` / raise `n_seeds`.
"""
from __future__ import annotations

import re

from .. import generation

INSTRUCTION = """\
Rewrite the message below in different words. Keep the same situation, the same request and the same \
speaker; change the wording and sentence structure. Reply with the rewritten message only, on one line.

Message: {question}"""

_LABEL = re.compile(r"^\s*(?:\*\*)?(?:rewritten message|rewritten|paraphrase|message|rewrite)\s*[:\-]\s*(?:\*\*)?\s*",
                    re.IGNORECASE)
_NORM = re.compile(r"[^a-z0-9]+")


class ParaphraseShortfall(RuntimeError):
    """The generator did not produce enough distinct paraphrases within `paraphrase.max_rounds`."""


def normalise(text: str) -> str:
    return _NORM.sub(" ", text.lower()).strip()


def clean(text: str) -> str:
    """A reply as a candidate question: its first non-empty line, minus a label and surrounding quotes."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = _LABEL.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


def prompt(question: str, system: str | None) -> list[dict]:
    conv = [{"role": "system", "content": system}] if system else []
    return conv + [{"role": "user", "content": INSTRUCTION.format(question=question)}]


def quotas(n_questions: int, n_seeds: int) -> list[int]:
    base, extra = divmod(n_questions - n_seeds, n_seeds)
    return [base + (i < extra) for i in range(n_seeds)]


def paraphrase(seeds: list[str], n_questions: int, gen, pcfg, seed: int, embed=None) -> tuple[list[list[str]], dict]:
    """Paraphrases of each seed (``out[i]`` for ``seeds[i]``, ``quotas(n_questions, len(seeds))[i]`` of them) and
    statistics. Deterministic given the generator, `seed` and the config. `embed(texts) -> unit rows` is needed
    when `pcfg.min_similarity` > 0."""
    if pcfg.min_similarity > 0 and embed is None:
        raise ValueError("paraphrase.min_similarity > 0 needs an embed function")
    want = quotas(n_questions, len(seeds))
    out: list[list[str]] = [[] for _ in seeds]
    seen = {normalise(s) for s in seeds}
    candidates = dropped = far = rounds = 0
    for rnd in range(pcfg.max_rounds):
        todo = [i for i in range(len(seeds)) if len(out[i]) < want[i]]
        if not todo:
            break
        rounds += 1
        n = max(want[i] - len(out[i]) for i in todo)
        replies = gen.generate([prompt(seeds[i], pcfg.system) for i in todo], generation.Sampling.from_cfg(
            pcfg.sampling, seed + rnd), n=n)
        cleaned = [[clean(g.text) for g in gens] for gens in replies]
        sim = None
        if pcfg.min_similarity > 0:
            flat = [c for cs in cleaned for c in cs]
            e = embed(seeds + flat)
            s_emb, c_emb = e[: len(seeds)], e[len(seeds) :]
            owner = [i for i, cs in zip(todo, cleaned) for _ in cs]
            sim = iter([float(c_emb[k] @ s_emb[o]) for k, o in enumerate(owner)])
        for i, cands in zip(todo, cleaned):
            for cand in cands:
                s = next(sim) if sim is not None else 1.0
                if len(out[i]) >= want[i]:
                    continue
                candidates += 1
                key = normalise(cand)
                if not key or key in seen:
                    dropped += 1
                    continue
                if s < pcfg.min_similarity:
                    far += 1
                    continue
                seen.add(key)
                out[i].append(cand)
    have = len(seeds) + sum(map(len, out))
    stats = {"n_seeds": len(seeds), "rounds": rounds, "candidates": candidates, "dropped_duplicate_or_empty": dropped,
             "dropped_far_from_seed": far, "paraphrases": sum(map(len, out))}
    if have < n_questions:
        short = [i for i in range(len(seeds)) if len(out[i]) < want[i]]
        raise ParaphraseShortfall(
            f"question_diversity.strategy=paraphrase: only {have} distinct prompts of n_questions={n_questions} after "
            f"{rounds} rounds ({candidates} candidates, {dropped} empty or duplicate, {far} below min_similarity="
            f"{pcfg.min_similarity}; seeds short: {short}). Raise question_diversity.paraphrase.max_rounds or "
            ".sampling.temperature, lower .min_similarity or n_questions, or raise n_seeds.")
    return out, stats
