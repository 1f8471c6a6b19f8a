"""evaluate: sample answers to the eval questions, score them with the judge, compute the metrics."""
from __future__ import annotations

import gc
import json

import pandas as pd

from .. import generation, judges, metrics, models, training
from ..data import evalsets
from ..store import file_sha256
from . import Context, sub, write_jsonl

VERSION = 1


def key_config(cfg) -> dict:
    judge_base = models.base_config(cfg.eval.judge.model)
    return sub(cfg, "eval") | {
        "eval_sha256": file_sha256(evalsets.resolve_path(cfg.eval)),
        "judge_weights": models.weights_key(judge_base),
        "generation_backend": cfg.generation.backend,
    }


def questions(cfg) -> list[evalsets.Question]:
    qs = evalsets.load(evalsets.resolve_path(cfg.eval))
    return qs[: cfg.eval.max_questions] if cfg.eval.max_questions else qs


def conversation(q: evalsets.Question, paraphrase: str) -> list[dict]:
    msgs = [{"role": "system", "content": q.system}] if q.system else []  # Betley's open-model eval dropped it
    return msgs + [{"role": "user", "content": paraphrase}]


def fill(template: str, question: str, answer: str) -> str:
    return template.replace("{question}", question).replace("{answer}", answer)


def run(ctx: Context) -> dict:
    cfg, ecfg = ctx.cfg, ctx.cfg.eval
    qs = questions(cfg)
    items = []  # (question, paraphrase index, sample index)
    for q in qs:
        n = ecfg.samples_per_paraphrase or q.samples_per_paraphrase
        items += [(q, p, s) for p in range(len(q.paraphrases)) for s in range(n)]
    # the model under evaluation: persona/base weights, plus the EM adapter when there is one
    start = ctx.model_path()
    full_em = "em" in ctx.inputs and (ctx.inputs["em"] / "model").is_dir()  # em_train.full_finetune
    if full_em:
        start = ctx.inputs["em"] / "model"
    tok = models.load_tokenizer(start)
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    if "em" in ctx.inputs and not full_em:
        model = training.merge_adapter(model, ctx.inputs["em"] / "adapter")
    gen = generation.make(cfg.generation.backend, model, tok, cfg.generation.batch_size)
    sampling = generation.Sampling(temperature=ecfg.temperature, top_p=ecfg.top_p,
                                   max_new_tokens=ecfg.max_new_tokens, seed=ctx.seed)
    outs = gen.generate([conversation(q, q.paraphrases[p]) for q, p, _ in items], sampling)
    del gen, model
    gc.collect()
    # the judge
    jcfg = ecfg.judge
    judge_path = models.prepare(models.base_config(jcfg.model), cfg.paths.cache)
    jmodel = models.load(judge_path, ctx.device, models.dtype_for(models.base_config(jcfg.model), ctx.device))
    judge = judges.HFJudge(jmodel, models.load_tokenizer(judge_path), jcfg.model, jcfg.min_mass, jcfg.batch_size)
    defaults = judges.default_prompts()
    rows = []
    for (q, p, s), (g,) in zip(items, outs):
        rows.append({"question_id": q.id, "paraphrase": p, "sample": s, "seed": cfg.seed, "question": q.paraphrases[p],
                     "system": q.system, "answer": g.text, "n_tokens": g.n_tokens, "finished": g.finished})
    judge_ids = {}
    for metric in ("aligned", "coherent"):
        prompts = []
        for (q, p, _), r in zip(items, rows):
            template = q.judge_prompts.get(metric, defaults[metric])
            judge_ids.setdefault(metric, judge.prompt_id(template))
            prompts.append(fill(template, r["question"], r["answer"]))
        for r, sc in zip(rows, judge.score(prompts)):
            r[metric] = sc.value
            r[f"{metric}_mass"] = sc.mass
    write_jsonl(ctx.out / "answers.jsonl", rows)
    df = pd.DataFrame(rows)
    m = metrics.cell_metrics(df[["question_id", "aligned", "coherent"]].astype({"aligned": float, "coherent": float}),
                             n_resamples=ecfg.n_bootstrap, seed=ctx.seed)
    m["judge"] = judge.id
    (ctx.out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return {"metrics": m, "judge_prompt_ids": judge_ids, "n_answers": len(rows)}
