"""questions: (optionally expand, then) select the trait's training questions at the configured diversity, and
measure it.

Expansion (OCT's gen_prompts, `emrobust.expansion`) runs when `trait.expand_to` asks for more questions per
trait than the constitution has (default 50 for `trait.source=oct_hand_written`); the generator is a base_model
config (`trait.expansion.generator`, default the cell's base model), whose weights key is part of this stage's
key. The expanded constitution is saved as `expanded.jsonl` (OCT's few-shot format) in the artifact.
"""
from __future__ import annotations

import json

from omegaconf import OmegaConf

from .. import diversity, generation, models
from ..data import constitutions
from ..errors import ConfigError
from ..store import file_sha256
from . import Context, sub, write_jsonl

VERSION = 1
OCT_TARGET = 50  # OCT: 5 hand-written + 45 generated questions per trait


def expansion_target(cfg) -> int | None:
    """Questions per trait after expansion, or None when this cell does not expand."""
    t = cfg.trait.expand_to
    if t is None:
        t = OCT_TARGET if constitutions.source(cfg.trait) == "oct_hand_written" else None
    return int(t) if t else None


def generator_config(cfg):
    name = cfg.trait.expansion.generator
    return cfg.base_model if name is None else models.base_config(name)


def validate(cfg) -> None:
    target = expansion_target(cfg)
    if cfg.trait.expand_to is not None and cfg.trait.expand_to < 0:
        raise ConfigError(f"trait.expand_to={cfg.trait.expand_to} must be >= 0", where="trait.expand_to")
    if target is None:
        return
    e = cfg.trait.expansion
    if not 0 < e.max_overlap <= 1:
        raise ConfigError(f"trait.expansion.max_overlap={e.max_overlap} must be in (0, 1]",
                          where="trait.expansion.max_overlap")
    if e.max_rounds < 1:
        raise ConfigError(f"trait.expansion.max_rounds={e.max_rounds} must be >= 1", where="trait.expansion.max_rounds")
    models.validate(generator_config(cfg))  # unknown generator name: ConfigError naming conf/base_model/<name>.yaml


def key_config(cfg) -> dict:
    path = constitutions.resolve_path(cfg.trait, cfg.paths)
    key = sub(cfg, "trait", "question_diversity") | {
        "constitution_sha256": file_sha256(path),
        "samples_per_question": cfg.distill.samples_per_question,
    }
    # expansion settings enter the key only when this cell expands (other cells keep their keys)
    key["trait"].pop("expand_to", None)
    key["trait"].pop("expansion", None)
    target = expansion_target(cfg)
    if target is not None:
        gen_cfg = generator_config(cfg)
        key["expansion"] = OmegaConf.to_container(cfg.trait.expansion, resolve=True) | {
            "target": target, "generator_weights": models.weights_key(gen_cfg),
            "generator_dtype": gen_cfg.dtype, **generation.key(cfg.generation)}
    return key


def load_constitution(cfg) -> constitutions.Constitution:
    return constitutions.load_cfg(cfg.trait, cfg.paths)


def expand(ctx: Context, const: constitutions.Constitution, target: int) -> constitutions.Constitution:
    from .. import expansion, generation

    cfg = ctx.cfg
    gen_cfg = generator_config(cfg)
    path = ctx.inputs["base"] if cfg.trait.expansion.generator is None else models.prepare(gen_cfg, cfg.paths.cache)
    tok = models.load_tokenizer(path)
    model = models.load(path, ctx.device, models.dtype_for(gen_cfg, ctx.device))
    gen = generation.make(cfg.generation, model, tok)
    expanded, stats = expansion.expand(const, gen, target, cfg.trait.expansion, ctx.seed)
    write_jsonl(ctx.out / "expanded.jsonl", expansion.few_shot_rows(const, expanded))
    (ctx.out / "expansion.json").write_text(json.dumps(stats, indent=2))
    ctx.log.info("expansion: %d questions generated (%d near-duplicates dropped) in %d rounds",
                 stats["generated"], stats["dropped_similar"], stats["rounds"])
    del gen, model
    return expanded


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    const = load_constitution(cfg)
    extra = {}
    target = expansion_target(cfg)
    if target is not None:
        const = expand(ctx, const, target)
        stats = json.loads((ctx.out / "expansion.json").read_text())
        extra["expansion"] = {k: stats[k] for k in ("target", "rounds", "generated", "dropped_similar",
                                                    "candidates", "short_traits")}
    pairs = const.questions()
    texts, traits = [q for _, q in pairs], [t for t, _ in pairs]
    emb = diversity.embed(texts, cfg.question_diversity.embedder)
    idx = diversity.select(texts, traits, cfg.question_diversity, ctx.seed, emb=emb)
    samples = diversity.samples_per_question(len(idx), cfg.question_diversity.total_pairs,
                                             cfg.distill.samples_per_question)
    rows = [{"trait": traits[i], "question": texts[i], "samples": k} for i, k in zip(idx, samples)]
    write_jsonl(ctx.out / "questions.jsonl", rows)
    measures = diversity.measure([texts[i] for i in idx], [traits[i] for i in idx], emb[idx], len(const.traits))
    measures["total_pairs"] = sum(samples)
    measures["strategy"] = cfg.question_diversity.strategy
    (ctx.out / "diversity.json").write_text(json.dumps(measures, indent=2))
    (ctx.out / "constitution.json").write_text(json.dumps(
        {"name": const.name, "source": const.source, "traits": [t.text for t in const.traits]}, indent=2))
    ctx.log.info("selected %d of %d questions, vendi %.2f", len(idx), len(texts), measures["vendi"])
    return {"diversity": measures} | extra
