"""questions: (optionally expand, then) select the trait's training questions at the configured diversity, and
measure it.

Expansion (OCT's gen_prompts, `emrobust.train.expansion`) runs when `trait.expand_to` asks for more questions per
trait than the constitution has (default 50 for `trait.source=oct_hand_written`); the generator is a base_model
config (`trait.expansion.generator`, default the cell's base model), whose weights key is part of this stage's
key. The expanded constitution is saved as `expanded.jsonl` (OCT's few-shot format) in the artifact.

`question_diversity.strategy=paraphrase` (emrobust/train/paraphrase.py) picks `n_seeds` seed questions and has a
generator (`question_diversity.paraphrase.generator`, default the cell's base model) write paraphrases of them
up to `n_questions`; rows of `questions.jsonl` then carry `seed` (the seed question they paraphrase; a seed's own
row has its own text) and `paraphrase.json` holds the statistics. Its diversity is measured like every other
strategy's, on the selected set's embeddings.
"""
from __future__ import annotations

import json

import numpy as np

from .. import generation
from ..config import expansion_target
from ..core import models
from ..core.keys import Read
from ..data import constitutions, inputs
from ..measures import persona
from ..train import diversity, expansion, paraphrase
from . import Context, read_jsonl, record_diversity, write_jsonl

# 2: strategy=paraphrase; 3: declared reads, per-sample seeded sampling, constitution.json has questions;
# 4: embeddings.npy (the selected questions' embeddings, for distill to measure what it trains on);
# 5: trait.reserved_questions kept out of the pool (reserved.json)
record = record_diversity  # run.json keeps the selection's diversity (distill's replaces it)
VERSION = 5


def expands(cfg) -> bool:
    return expansion_target(cfg.trait) is not None


def paraphrases(cfg) -> bool:
    return cfg.question_diversity.strategy == "paraphrase"


def generates(cfg) -> bool:
    """Does this stage generate text (question expansion or paraphrases)?"""
    return expands(cfg) or paraphrases(cfg)


def uses_cell_base(cfg) -> bool:
    """Is one of its generators the cell's own base model (then the base model is upstream of this stage)?"""
    return ((expands(cfg) and cfg.trait.expansion.generator is None)
            or (paraphrases(cfg) and cfg.question_diversity.paraphrase.generator is None))


def _named_generator_key(name) -> str | None:
    return None if name is None else models.named_base_key(name)


READS = (
    Read("trait", exclude=("persona_instruction",)),
    Read("question_diversity", exclude=("token_budget",)),  # the budget subsamples distill's pairs
    "distill.samples_per_question",
    Read("generation", when=generates),
    Read("base_model.dtype", when=uses_cell_base),
)
CONTENT = {
    "constitution_sha256": lambda cfg: inputs.content_id(cfg, "trait"),
    "expansion_generator": lambda cfg: _named_generator_key(cfg.trait.expansion.generator) if expands(cfg) else None,
    "paraphrase_generator": lambda cfg: (_named_generator_key(cfg.question_diversity.paraphrase.generator)
                                        if paraphrases(cfg) else None),
}


def generator_config(cfg, name):
    """The base_model config of a generator name (None = the cell's base model)."""
    return cfg.base_model if name is None else models.base_config(name)


def load_generator(ctx: Context, name: str | None):
    """The generation interface over generator `name` (None = the cell's base model), and its model."""
    cfg = ctx.cfg
    if name is None:
        path, dtype_cfg = ctx.inputs["base"], cfg.base_model
    else:
        gen_cfg = models.base_config(name)
        path, dtype_cfg = models.prepare(gen_cfg, cfg.paths.cache), gen_cfg
    tok = models.load_tokenizer(path)
    model = models.load(path, ctx.device, models.dtype_for(dtype_cfg, ctx.device))
    return generation.make(cfg.generation, model, tok), model


def paraphrased(ctx: Context, texts: list[str], traits: list[int], emb) -> tuple[list[int], list[str], list[int]]:
    """strategy=paraphrase: (the seeds' indices in `texts`, the paraphrases in seed order, each paraphrase's seed
    index in `texts`)."""
    qd = ctx.cfg.question_diversity
    seeds = diversity.select(texts, traits, diversity.seed_selection(qd), ctx.seed, emb=emb)
    gen, model = load_generator(ctx, qd.paraphrase.generator)
    para, stats = paraphrase.paraphrase([texts[i] for i in seeds], qd.n_questions, gen, qd.paraphrase, ctx.seed,
                                        embed=lambda t: diversity.embed(t, qd.embedder))
    del gen, model
    stats["seeds"] = [texts[i] for i in seeds]
    (ctx.out / "paraphrase.json").write_text(json.dumps(stats, indent=2))
    ctx.log.info("paraphrase: %d seeds, %d paraphrases (%d candidates empty/duplicate, %d too far from their seed) "
                 "in %d rounds", len(seeds), stats["paraphrases"], stats["dropped_duplicate_or_empty"],
                 stats["dropped_far_from_seed"], stats["rounds"])
    return seeds, [p for ps in para for p in ps], [s for s, ps in zip(seeds, para) for _ in ps]


def expand(ctx: Context, const: constitutions.Constitution, target: int) -> constitutions.Constitution:
    cfg = ctx.cfg
    gen, model = load_generator(ctx, cfg.trait.expansion.generator)
    expanded, stats = expansion.expand(const, gen, target, cfg.trait.expansion, ctx.seed)
    write_jsonl(ctx.out / "expanded.jsonl", expansion.few_shot_rows(const, expanded))
    (ctx.out / "expansion.json").write_text(json.dumps(stats, indent=2))
    ctx.log.info("expansion: %d questions generated (%d near-duplicates dropped) in %d rounds",
                 stats["generated"], stats["dropped_similar"], stats["rounds"])
    del gen, model
    return expanded


def run(ctx: Context) -> dict:
    try:
        return _run(ctx)
    finally:
        diversity.release()


def _run(ctx: Context) -> dict:
    cfg = ctx.cfg
    const = constitutions.load_cfg(cfg.trait, cfg.paths)
    # the persona check's questions, kept out of every level's pool (from the constitution as read: the same set
    # whatever the level, and whatever an expansion adds)
    kept_out = persona.reserve([t.questions for t in const.traits], cfg.trait.reserved_questions)
    reserved_rows = [{"trait": t, "question": q} for t, q in kept_out]
    (ctx.out / "reserved.json").write_text(json.dumps(reserved_rows, indent=1))
    extra = {"reserved_questions": len(kept_out)}
    target = expansion_target(cfg.trait)
    if target is not None:
        const = expand(ctx, const, target)
        stats = json.loads((ctx.out / "expansion.json").read_text())
        extra["expansion"] = {k: stats[k] for k in ("target", "rounds", "generated", "dropped_similar",
                                                    "candidates", "short_traits")}
    out_of_pool = set(kept_out)
    pairs = [p for p in const.questions() if p not in out_of_pool]
    texts, traits = [q for _, q in pairs], [t for t, _ in pairs]
    emb = diversity.embed(texts, cfg.question_diversity.embedder)
    seed_of = None
    if cfg.question_diversity.strategy == "paraphrase":
        seeds, paras, origin = paraphrased(ctx, texts, traits, emb)
        # the paraphrases join the pool (so tfidf's idf comes from the same pool as for the other strategies)
        seed_of = {i: i for i in seeds} | {len(texts) + j: o for j, o in enumerate(origin)}
        idx = list(seeds) + [len(texts) + j for j in range(len(paras))]
        texts, traits = texts + paras, traits + [traits[o] for o in origin]
        e = cfg.question_diversity.embedder
        emb = diversity.embed(texts, e) if e == "tfidf" else np.vstack([emb, diversity.embed(paras, e)])
    else:
        idx = diversity.select(texts, traits, cfg.question_diversity, ctx.seed, emb=emb)
    samples = diversity.samples_per_question(len(idx), cfg.question_diversity.total_pairs,
                                             cfg.distill.samples_per_question)
    rows = [{"trait": traits[i], "question": texts[i], "samples": k}
            | ({"seed": texts[seed_of[i]]} if seed_of else {}) for i, k in zip(idx, samples)]
    write_jsonl(ctx.out / "questions.jsonl", rows)
    np.save(ctx.out / "embeddings.npy", emb[idx])  # row i = questions.jsonl line i
    measures = diversity.measure([texts[i] for i in idx], [traits[i] for i in idx], emb[idx], len(const.traits))
    measures["total_pairs"] = sum(samples)
    measures["strategy"] = cfg.question_diversity.strategy
    (ctx.out / "diversity.json").write_text(json.dumps(measures, indent=2))
    # the whole constitution the selection drew from (expanded, if it was): what later stages read of it
    (ctx.out / "constitution.json").write_text(json.dumps(
        {"name": const.name, "source": const.source, "traits": [t.text for t in const.traits],
         "questions": [t.questions for t in const.traits]}, indent=2))
    if seed_of:
        para = json.loads((ctx.out / "paraphrase.json").read_text())
        extra["paraphrase"] = {k: v for k, v in para.items() if k != "seeds"}
    ctx.log.info("selected %d of %d questions, vendi %.2f", len(idx), len(texts), measures["vendi"])
    accept(cfg, ctx.out, {}, ctx.screen)
    return {"diversity": measures} | extra


def accept(cfg, out, data: dict, screen) -> None:
    """Checks of a questions artifact for the cell that uses it, built or reused: no eval question among the
    questions a generator wrote (the constitution's own were checked at validation)."""
    if generates(cfg):
        screen("generated training questions", [(f"questions.jsonl line {i + 1}", r["question"])
                                                for i, r in enumerate(read_jsonl(out / "questions.jsonl"))])
