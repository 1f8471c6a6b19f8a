"""evaluate: sample answers to the eval questions, score them with the judge, compute the metrics."""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import pandas as pd

from .. import generation, judges, metrics, models, persona, training
from ..data import evalsets
from ..store import file_sha256
from . import Context, sub, write_jsonl

VERSION = 3  # 2: judge cache, per-score judge ids, model_key in answers; registry/path eval sets, variants
#             3: persona check (persona_answers.jsonl, persona_trait_score*)


def key_config(cfg) -> dict:
    kc = sub(cfg, "eval") | {
        "eval_sha256": file_sha256(evalsets.resolve_path(cfg.eval, cfg.paths)),
        "judge": judges.key(cfg.eval.judge),
        **generation.key(cfg.generation),
    }
    if not persona_active(cfg):
        kc["eval"].pop("persona", None)
    return kc


def persona_active(cfg) -> bool:
    return cfg.trait.name != "none" and cfg.eval.persona.n_questions > 0


def persona_metrics(judge, answers: dict[str, list], items, traits: list[str], cache_root, n_bootstrap: int,
                    seed: int) -> tuple[dict, list[dict]]:
    """Judge the persona answers of each model ("fold", "evaluated"); metrics with bootstrap intervals."""
    import numpy as np

    tmpl = persona.template(traits)
    cache = judges.JudgeCache(cache_root) if cache_root is not None else None
    m, rows = {}, []
    for which, outs in answers.items():
        pid, scores = judges.score_pairs(judge, tmpl, [(q, g.text) for (_, q, _), (g,) in zip(items, outs)], cache)
        vals = [sc.value for sc in scores]
        for (t, q, smp), (g,), sc in zip(items, outs, scores):
            rows.append({"model": which, "trait": t, "question": q, "sample": smp, "answer": g.text,
                         "trait_score": sc.value, "trait_score_mass": sc.mass, "judge": pid})
        ok = [v for v in vals if v is not None]
        name = "persona_trait_score" + ("_fold" if which == "fold" else "")
        lo, hi = metrics.bootstrap_ci(ok, np.mean, n_resamples=n_bootstrap, seed=seed)
        m |= {name: float(np.mean(ok)) if ok else None, f"{name}_lo": lo, f"{name}_hi": hi}
    return m, rows


def questions(cfg) -> list[evalsets.Question]:
    return evalsets.questions(cfg)


def conversation(q: evalsets.Question, paraphrase: str) -> list[dict]:
    msgs = [{"role": "system", "content": q.system}] if q.system else []  # Betley's open-model eval dropped it
    return msgs + [{"role": "user", "content": paraphrase}]


fill = judges.fill


def judge_rows(judge, rows: list[dict], qs: list[evalsets.Question], cache_root) -> dict[str, str]:
    """Add `aligned`/`coherent` (+ `_mass`, `_judge` = judge prompt id) to each answer row, in place, through the
    judge cache (None = no cache). Templates: the question's own `judge_prompts`, else our defaults."""
    by_id = {q.id: q for q in qs}
    defaults = judges.default_prompts()
    cache = judges.JudgeCache(cache_root) if cache_root is not None else None
    ids: dict[str, str] = {}
    for metric in ("aligned", "coherent"):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            q = by_id.get(r["question_id"])
            groups.setdefault((q.judge_prompts if q else {}).get(metric, defaults[metric]), []).append(i)
        for template, idx in groups.items():
            pid, scores = judges.score_pairs(judge, template, [(rows[i]["question"], rows[i]["answer"]) for i in idx],
                                             cache)
            ids.setdefault(metric, pid)
            for i, sc in zip(idx, scores):
                rows[i][metric], rows[i][f"{metric}_mass"], rows[i][f"{metric}_judge"] = sc.value, sc.mass, pid
    return ids


def compute_metrics(rows: list[dict], judge_id: str, n_bootstrap: int, seed: int) -> dict:
    df = pd.DataFrame(rows)
    m = metrics.cell_metrics(df[["question_id", "aligned", "coherent"]].astype({"aligned": float, "coherent": float}),
                             n_resamples=n_bootstrap, seed=seed)
    m["judge"] = judge_id
    return m


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
    # the chat template used here must be the one the EM stage trained with (recorded in its manifest)
    template_sha = hashlib.sha256((tok.chat_template or "").encode()).hexdigest()
    trained_with = ctx.manifests.get("em", {}).get("chat_template_sha256")
    if trained_with is not None and trained_with != template_sha:
        raise RuntimeError(f"evaluate: chat template {template_sha[:12]} differs from the EM stage's {trained_with[:12]}")
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    if "em" in ctx.inputs and not full_em:
        model = training.merge_adapter(model, ctx.inputs["em"] / "adapter")
    gen = generation.make(cfg.generation, model, tok)
    sampling = generation.Sampling(temperature=ecfg.temperature, top_p=ecfg.top_p,
                                   max_new_tokens=ecfg.max_new_tokens, seed=ctx.seed)
    outs = gen.generate([conversation(q, q.paraphrases[p]) for q, p, _ in items], sampling)
    # persona check: held-out constitution questions, no system prompt, answered by this model and the fold model
    p_items, p_answers, p_source = [], {}, None
    if persona_active(cfg):
        pcfg = ecfg.persona
        picked, p_source = persona.pick(cfg, ctx.inputs["questions"], pcfg.n_questions, ctx.seed)
        p_items = [(t, q, k) for t, q in picked for k in range(pcfg.samples_per_question)]
        p_convs = [[{"role": "user", "content": q}] for _, q, _ in p_items]
        p_sampling = generation.Sampling(temperature=pcfg.temperature, top_p=pcfg.top_p,
                                         max_new_tokens=pcfg.max_new_tokens, seed=ctx.seed + 1)
        p_answers["evaluated"] = gen.generate(p_convs, p_sampling)
    del gen, model
    gc.collect()
    if p_items and "em" in ctx.inputs:  # before EM: the persona model itself
        fmodel = models.load(ctx.inputs["fold"] / "model", ctx.device, models.dtype_for(cfg.base_model, ctx.device))
        p_answers["fold"] = generation.make(cfg.generation, fmodel, tok).generate(
            p_convs, p_sampling)
        del fmodel
        gc.collect()
    elif p_items:  # no EM: the evaluated model is the fold model
        p_answers["fold"] = p_answers["evaluated"]
    # the judge
    jcfg = ecfg.judge
    judge = judges.make(jcfg, cfg.paths.cache, ctx.device)
    model_key = next((ctx.manifests[n]["key"] for n in ("em", "fold") if n in ctx.manifests),
                     f"base:{models.weights_key(cfg.base_model)}")
    rows = []
    for (q, p, s), (g,) in zip(items, outs):
        rows.append({"question_id": q.id, "paraphrase": p, "sample": s, "seed": cfg.seed, "model_key": model_key,
                     "question": q.paraphrases[p], "system": q.system, "answer": g.text, "n_tokens": g.n_tokens,
                     "finished": g.finished})
    cache_root = Path(cfg.paths.cache) / "judge" if jcfg.cache else None
    calls0 = judge.calls
    judge_ids = judge_rows(judge, rows, qs, cache_root)
    write_jsonl(ctx.out / "answers.jsonl", rows)
    m = compute_metrics(rows, judge.id, ecfg.n_bootstrap, ctx.seed)
    if p_items:
        pm, p_rows = persona_metrics(judge, p_answers, p_items, persona.traits(ctx.inputs["questions"]),
                                     cache_root, ecfg.n_bootstrap, ctx.seed)
        write_jsonl(ctx.out / "persona_answers.jsonl", p_rows)
        m |= pm | {"persona_questions": p_source, "persona_n": len(p_items)}
    (ctx.out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return {"metrics": m, "judge_prompt_ids": judge_ids, "n_answers": len(rows), "judge_calls": judge.calls - calls0,
            "chat_template_sha256": template_sha}
