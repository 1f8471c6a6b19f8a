"""evaluate: sample answers to the eval questions, score them with the judge, compute the metrics."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import pandas as pd

from .. import generation, judges, metrics, models, training
from ..data import evalsets
from ..store import file_sha256
from . import Context, sub, write_jsonl

VERSION = 2  # 2: judge cache, per-score judge ids, model_key in answers; registry/path eval sets, variants


def key_config(cfg) -> dict:
    return sub(cfg, "eval") | {
        "eval_sha256": file_sha256(evalsets.resolve_path(cfg.eval, cfg.paths)),
        "judge": judges.key(cfg.eval.judge),
        **generation.key(cfg.generation),
    }


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
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    if "em" in ctx.inputs and not full_em:
        model = training.merge_adapter(model, ctx.inputs["em"] / "adapter")
    gen = generation.make(cfg.generation, model, tok)
    sampling = generation.Sampling(temperature=ecfg.temperature, top_p=ecfg.top_p,
                                   max_new_tokens=ecfg.max_new_tokens, seed=ctx.seed)
    outs = gen.generate([conversation(q, q.paraphrases[p]) for q, p, _ in items], sampling)
    del gen, model
    gc.collect()
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
    (ctx.out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return {"metrics": m, "judge_prompt_ids": judge_ids, "n_answers": len(rows), "judge_calls": judge.calls - calls0}
