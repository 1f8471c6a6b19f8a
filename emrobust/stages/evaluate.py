"""evaluate: score one `sample` artifact's answers with the judge and compute the metrics.

Keyed by the answers (the upstream sample's key) and the judge (`eval.judge`: backend, model and its weights,
min_mass) and `eval.n_bootstrap`, so changing the judge re-runs this stage alone. Templates: each question's own
`judge_prompts` (saved by `sample`), else our defaults; persona answers are rated with `persona.TEMPLATE`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import judges, metrics, persona
from . import Context, read_jsonl, write_jsonl

VERSION = 4  # 2: judge cache, per-score judge ids; 3: persona check; 4: judging apart from sampling

READS = ("eval.judge", "eval.n_bootstrap")
CONTENT = {"judge_weights": lambda cfg: judges.weights(cfg.eval.judge)}


def judge_rows(judge, rows: list[dict], judge_prompts: dict[str, dict], cache_root) -> dict[str, str]:
    """Add `aligned`/`coherent` (+ `_mass`, `_judge` = judge prompt id) to each answer row, in place, through the
    judge cache (None = no cache). Templates: the question's own `judge_prompts` (by question id), else ours."""
    defaults = judges.default_prompts()
    cache = judges.JudgeCache(cache_root) if cache_root is not None else None
    ids: dict[str, str] = {}
    for metric in ("aligned", "coherent"):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((judge_prompts.get(r["question_id"]) or {}).get(metric, defaults[metric]), []).append(i)
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


def persona_metrics(judge, rows: list[dict], traits: list[str], cache_root, n_bootstrap: int, seed: int) -> dict:
    """Rate each persona answer's trait expression (in place: `trait_score`, `trait_score_mass`, `judge`);
    `persona_trait_score` with its bootstrap interval."""
    import numpy as np

    cache = judges.JudgeCache(cache_root) if cache_root is not None else None
    pid, scores = judges.score_pairs(judge, persona.template(traits), [(r["question"], r["answer"]) for r in rows],
                                     cache)
    for r, sc in zip(rows, scores):
        r |= {"trait_score": sc.value, "trait_score_mass": sc.mass, "judge": pid}
    ok = [sc.value for sc in scores if sc.value is not None]
    lo, hi = metrics.bootstrap_ci(ok, np.mean, n_resamples=n_bootstrap, seed=seed)
    return {"persona_trait_score": float(np.mean(ok)) if ok else None, "persona_trait_score_lo": lo,
            "persona_trait_score_hi": hi}


def run(ctx: Context) -> dict:
    cfg, jcfg = ctx.cfg, ctx.cfg.eval.judge
    src = ctx.inputs["sample"]
    rows = read_jsonl(src / "answers.jsonl")
    judge_prompts = json.loads((src / "questions.json").read_text())
    judge = judges.make(jcfg, cfg.paths.cache, ctx.device)
    cache_root = Path(cfg.paths.cache) / "judge" if jcfg.cache else None
    calls0 = judge.calls
    judge_ids = judge_rows(judge, rows, judge_prompts, cache_root)
    write_jsonl(ctx.out / "answers.jsonl", rows)
    m = compute_metrics(rows, judge.id, cfg.eval.n_bootstrap, ctx.seed)
    if (src / "persona_answers.jsonl").exists():
        p_rows = read_jsonl(src / "persona_answers.jsonl")
        info = json.loads((src / "persona.json").read_text())
        m |= persona_metrics(judge, p_rows, info["traits"], cache_root, cfg.eval.n_bootstrap, ctx.seed)
        m |= {"persona_questions": info["questions"], "persona_n": len(p_rows)}
        write_jsonl(ctx.out / "persona_answers.jsonl", p_rows)
    (ctx.out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return {"metrics": m, "judge_prompt_ids": judge_ids, "n_answers": len(rows), "judge_calls": judge.calls - calls0,
            "model_key": ctx.manifests["sample"].get("model_key")}
