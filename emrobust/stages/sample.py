"""sample: one model's answers to the eval questions (their `system` prompts included) and, for a persona, to
held-out constitution questions (no system prompt: the persona must be carried by the weights).

Keyed by the model (its upstream keys), the question set (its sha256) and the sampling settings, never by the
judge: a new judge, a judge sweep or a panel re-uses these answers (`evaluate` scores them). The model is the
upstream `em` artifact (its adapter on its starting weights, or its full model) when there is one, else the
`start` model itself (the persona, or the base model), so the same model is sampled once whatever cell asks.
"""
from __future__ import annotations

import gc
import hashlib
import json

from .. import generation, models, persona, training
from ..data import evalsets
from ..keys import Read
from ..store import file_sha256
from . import Context, write_jsonl

VERSION = 1


def persona_active(cfg) -> bool:
    """A persona check runs for a persona cell whose eval.persona asks for questions."""
    return cfg.trait.name != "none" and cfg.eval.persona.n_questions > 0


READS = (
    Read("eval", exclude=("n_bootstrap", "persona")),
    Read("eval.persona", when=persona_active),
    "generation",
    "base_model.dtype",
)
CONTENT = {"eval_sha256": lambda cfg: file_sha256(evalsets.resolve_path(cfg.eval, cfg.paths))}


def conversation(q: evalsets.Question, paraphrase: str) -> list[dict]:
    msgs = [{"role": "system", "content": q.system}] if q.system else []  # Betley's open-model eval dropped it
    return msgs + [{"role": "user", "content": paraphrase}]


def load_model(ctx: Context):
    """(model, tokenizer, the model's key) of the model this node samples."""
    cfg = ctx.cfg
    dtype = models.dtype_for(cfg.base_model, ctx.device)
    if "em" in ctx.inputs:
        em = ctx.inputs["em"]
        full = (em / "model").is_dir()  # em_train.full_finetune
        path = em / "model" if full else ctx.model_path("start")
        tok = models.load_tokenizer(path)
        # the chat template used here must be the one the EM stage trained with (recorded in its manifest)
        template_sha = hashlib.sha256((tok.chat_template or "").encode()).hexdigest()
        trained_with = ctx.manifests["em"].get("chat_template_sha256")
        if trained_with is not None and trained_with != template_sha:
            raise RuntimeError(f"sample: chat template {template_sha[:12]} differs from the EM stage's "
                               f"{trained_with[:12]}")
        model = models.load(path, ctx.device, dtype)
        if not full:
            model = training.merge_adapter(model, em / "adapter")
        return model, tok, ctx.manifests["em"]["key"]
    path = ctx.model_path("start")
    return models.load(path, ctx.device, dtype), models.load_tokenizer(path), ctx.manifests["start"]["key"]


def run(ctx: Context) -> dict:
    cfg, ecfg = ctx.cfg, ctx.cfg.eval
    qs = evalsets.questions(cfg)
    items = []  # (question, paraphrase index, sample index)
    for q in qs:
        n = ecfg.samples_per_paraphrase or q.samples_per_paraphrase
        items += [(q, p, s) for p in range(len(q.paraphrases)) for s in range(n)]
    model, tok, model_key = load_model(ctx)
    gen = generation.make(cfg.generation, model, tok)
    sampling = generation.Sampling(temperature=ecfg.temperature, top_p=ecfg.top_p,
                                   max_new_tokens=ecfg.max_new_tokens, seed=ctx.seed)
    outs = gen.generate([conversation(q, q.paraphrases[p]) for q, p, _ in items], sampling)
    rows = [{"question_id": q.id, "paraphrase": p, "sample": s, "seed": cfg.seed, "model_key": model_key,
             "question": q.paraphrases[p], "system": q.system, "answer": g.text, "n_tokens": g.n_tokens,
             "finished": g.finished} for (q, p, s), (g,) in zip(items, outs)]
    write_jsonl(ctx.out / "answers.jsonl", rows)
    # what the judge needs of the question set: each question's own judge prompts (else the defaults)
    (ctx.out / "questions.json").write_text(json.dumps({q.id: q.judge_prompts for q in qs}, indent=1))
    extra = {"n_answers": len(rows), "model_key": model_key,
             "chat_template_sha256": hashlib.sha256((tok.chat_template or "").encode()).hexdigest()}
    if "questions" in ctx.inputs:  # the persona check: held-out constitution questions, no system prompt
        pcfg = ecfg.persona
        picked, source = persona.pick(ctx.inputs["questions"], pcfg.n_questions, ctx.seed)
        p_items = [(t, q, k) for t, q in picked for k in range(pcfg.samples_per_question)]
        p_sampling = generation.Sampling(temperature=pcfg.temperature, top_p=pcfg.top_p,
                                         max_new_tokens=pcfg.max_new_tokens, seed=ctx.seed + 1)
        p_outs = gen.generate([[{"role": "user", "content": q}] for _, q, _ in p_items], p_sampling)
        write_jsonl(ctx.out / "persona_answers.jsonl", [
            {"trait": t, "question": q, "sample": k, "answer": g.text, "model_key": model_key}
            for (t, q, k), (g,) in zip(p_items, p_outs)])
        (ctx.out / "persona.json").write_text(json.dumps(
            {"traits": persona.traits(ctx.inputs["questions"]), "questions": source}, indent=1))
        extra |= {"persona_n": len(p_items), "persona_questions": source}
    del gen, model
    gc.collect()
    return extra
