"""classifier: the persona classifier of the cell's trait on its base model (emrobust/measures/persona_classifier.py).

The base model answers `eval.persona.classifier.n_questions` non-reserved constitution questions (picked round-robin
over traits in a seeded order) with the persona's system prompt (positive) and without it (negative), sampled as the
persona check samples (`eval.persona`: temperature, top_p, max_new_tokens, samples per question); it also answers the
reserved questions the persona check uses, without a system prompt: the base model's own rate. Keyed like
`directions` (the base model, the constitution's sha256, the trait, the settings) but without the seed: one
instrument per (persona, base model), built once for every diversity level, EM dataset and seed of the persona.
`eval.persona.classifier.min_auroc` is not read here (evaluate applies the validity rule).
"""
from __future__ import annotations

import random

import numpy as np

from .. import generation
from ..core import models
from ..core.keys import Read
from ..data import constitutions, inputs
from ..measures import persona, persona_classifier
from ..train import diversity
from . import Context, write_jsonl

VERSION = 1
SEEDED = False  # one instrument per (persona, base model): the cell seed is not in its key


def active(cfg) -> bool:
    """A persona cell whose persona check runs and whose classifier is on."""
    return (cfg.trait.name != "none" and cfg.eval.persona.n_questions != 0
            and bool(cfg.eval.persona.classifier.enabled))


READS = (
    Read("trait", exclude=("expand_to", "expansion")),  # reserved from the constitution as read
    Read("eval.persona", exclude=("classifier.min_auroc",)),
    "eval.n_bootstrap",
    "base_model.assistant_name",
    "base_model.dtype",
    "generation",
)
CONTENT = {"constitution_sha256": lambda cfg: inputs.content_id(cfg, "trait")}


def training_questions(per_trait: list[list[str]], reserved: list[tuple[int, str]], n: int,
                       seed: int) -> list[tuple[int, str]]:
    """`n` non-reserved (trait, question), round-robin over traits, each trait's questions in a seeded order."""
    kept_out = set(reserved)
    rng = random.Random(seed)
    by_trait = []
    for i, qs in enumerate(per_trait):
        pool = [q for q in dict.fromkeys(qs) if (i, q) not in kept_out]
        rng.shuffle(pool)
        by_trait.append(pool)
    out, depth = [], 0
    while len(out) < n and any(depth < len(qs) for qs in by_trait):
        for i, qs in enumerate(by_trait):
            if depth < len(qs) and len(out) < n:
                out.append((i, qs[depth]))
        depth += 1
    if len(out) < n:  # emrobust.engine.validation checks the count first
        raise ValueError(f"eval.persona.classifier.n_questions={n} but only {len(out)} non-reserved questions")
    return out


def split(n_questions: int, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out questions: round(fraction * n), at least 2, leaving at least 2 to train."""
    k = min(max(2, int(round(fraction * n_questions))), n_questions - 2)
    mask = np.zeros(n_questions, dtype=bool)
    mask[np.random.default_rng(seed).choice(n_questions, size=k, replace=False)] = True
    return mask


def run(ctx: Context) -> dict:
    cfg, pcfg = ctx.cfg, ctx.cfg.eval.persona
    ccfg = pcfg.classifier
    const = constitutions.load_cfg(cfg.trait, cfg.paths)
    per_trait = [t.questions for t in const.traits]
    reserved = persona.reserve(per_trait, cfg.trait.reserved_questions)
    n_check = cfg.trait.reserved_questions if pcfg.n_questions is None else pcfg.n_questions
    check = reserved[:n_check]  # the persona check's questions (emrobust.measures.persona.pick)
    n_train = sum(len(set(qs)) for qs in per_trait) - len(reserved) if ccfg.n_questions is None else ccfg.n_questions
    train_qs = training_questions(per_trait, reserved, n_train, ctx.seed)
    system = constitutions.persona_prompt(const, cfg.trait.persona_instruction, cfg.base_model.assistant_name)

    path = ctx.inputs["base"]
    tok = models.load_tokenizer(path)
    model = models.load(path, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    gen = generation.make(cfg.generation, model, tok)
    k = int(pcfg.samples_per_question)
    sampling = generation.Sampling(temperature=pcfg.temperature, top_p=pcfg.top_p,
                                   max_new_tokens=pcfg.max_new_tokens, seed=ctx.seed)

    def answers(qs, with_system: bool) -> list[str]:
        convs = [([{"role": "system", "content": system}] if with_system else []) + [{"role": "user", "content": q}]
                 for _, q in qs for _ in range(k)]
        return [g.text for (g,) in gen.generate(convs, sampling)]

    pos, neg, base = answers(train_qs, True), answers(train_qs, False), answers(check, False)
    del gen, model
    rows = ([{"trait": t, "question": q, "sample": j, "label": 1, "answer": a}
             for ((t, q), j), a in zip([(x, j) for x in train_qs for j in range(k)], pos)]
            + [{"trait": t, "question": q, "sample": j, "label": 0, "answer": a}
               for ((t, q), j), a in zip([(x, j) for x in train_qs for j in range(k)], neg)])
    held = split(len(train_qs), ccfg.heldout_fraction, ctx.seed)
    q_index = {q: i for i, (_, q) in enumerate(train_qs)}
    for r in rows:
        r["split"] = "heldout" if held[q_index[r["question"]]] else "train"
    try:
        x = persona_classifier.embed([r["answer"] for r in rows], ccfg.embedder)
        x_base = persona_classifier.embed(base, ccfg.embedder)
    finally:
        diversity.release()
    y = np.array([r["label"] for r in rows])
    groups = np.array([q_index[r["question"]] for r in rows])
    tr = np.array([r["split"] == "train" for r in rows])
    coef, intercept = persona_classifier.fit(x[tr], y[tr], ccfg.C, ctx.seed)
    p = persona_classifier.probabilities(x, coef, intercept)
    for r, pr in zip(rows, p):
        r["p_persona"] = float(pr)
    heldout = persona_classifier.heldout_scores(groups[~tr], y[~tr], p[~tr], cfg.eval.n_bootstrap, ctx.seed)
    p_base = persona_classifier.probabilities(x_base, coef, intercept)
    b = persona_classifier.rate(p_base)
    write_jsonl(ctx.out / "train.jsonl", rows)
    write_jsonl(ctx.out / "base_answers.jsonl", [
        {"trait": t, "question": q, "sample": j, "answer": a, "p_persona": float(pr)}
        for ((t, q), j), a, pr in zip([(x_, j) for x_ in check for j in range(k)], base, p_base)])
    info = {"embedder": str(ccfg.embedder), "threshold": persona_classifier.THRESHOLD,
            "n_train_questions": int((~held).sum()), "n_heldout_questions": int(held.sum()),
            "n_train": int(tr.sum()), "heldout": heldout, "base": b, "train_accuracy":
            float(((p[tr] >= persona_classifier.THRESHOLD) == y[tr]).mean())}
    persona_classifier.save(ctx.out, coef, intercept, info)
    ctx.log.info("persona classifier: held-out AUROC %.3f [%s, %s], F1 %.3f; base model's rate %.3f on %d answers",
                 heldout["auroc"], heldout["auroc_lo"], heldout["auroc_hi"], heldout["f1"], b["rate"], b["n"])
    return {"classifier": info}
