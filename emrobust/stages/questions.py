"""questions: select the trait's training questions at the configured diversity, and measure it."""
from __future__ import annotations

import json

from .. import diversity
from ..data import constitutions
from ..store import file_sha256
from . import Context, sub, write_jsonl

VERSION = 1


def key_config(cfg) -> dict:
    path = constitutions.resolve_path(cfg.trait, cfg.paths)
    return sub(cfg, "trait", "question_diversity") | {
        "constitution_sha256": file_sha256(path),
        "samples_per_question": cfg.distill.samples_per_question,
    }


def load_constitution(cfg) -> constitutions.Constitution:
    return constitutions.load_cfg(cfg.trait, cfg.paths)


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    const = load_constitution(cfg)
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
    return {"diversity": measures}
