"""evaluate: score one `sample` artifact's answers with the judge and compute the metrics, pooled and per format
variant (`<metric>@plain`, `@json`, `@template`: `variant_metrics`).

Keyed by the answers (the upstream sample's key), the judge (`judge`: backend, model and its weights, min_mass;
a panel's members' presets) and how metrics are computed (`judge.threshold_rule`, `eval.n_bootstrap`), so
changing the judge re-runs this stage alone. Templates: each question's own `judge_prompts` (saved by
`sample`), else our defaults; persona answers are rated with `persona.TEMPLATE`. A panel (`judge=panel`) scores
every answer with each member; the metrics are the aggregate's, with each member's (`<metric>@<member>`), the
spread of every EM metric across members and their agreement (agreement.json). The same model's judge-free
measures (the sample stage's probe and projections) and general capability (the `capability` node upstream,
when the cell has one) are merged into its metrics. The judge's calibration for the
templates used is recorded with the metrics (emrobust.measures.calibration.trust; refreshed in run.json on every run); an
in-domain node's (`params.domain`) against its domain's labelled reference.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import judges
from ..core.keys import Read
from ..data import domains, evalsets
from ..measures import calibration, metrics, persona, persona_classifier
from ..train import diversity
from . import Context, read_jsonl, write_jsonl

MEASURES = True  # its metrics are the cell's evaluation (emrobust.core.results), logged with the cell's training data
VERSION = 9  # 2: judge cache, per-score judge ids; 3: persona check; 4: judging apart from sampling;
#             5: the judge group (panels, threshold rule, calibration figures); 6: probe, monitor, em_step;
#             7: no tail interval under metrics.MIN_TAIL answers in the tail; 8: metrics per format variant
#             (a rebuild re-reads the judge cache: no judge call is repeated); 9: the MO rate's counts
#             em_rate_mo_k/_n (narrowness)

def classifying(cfg) -> bool:
    from .classifier import active  # lazy: slow import

    return active(cfg)


READS = ("judge", "eval.n_bootstrap",
         Read("eval.persona.classifier.min_auroc", when=classifying))  # the classifier's validity rule
CONTENT = {"judge_weights": lambda cfg: judges.weights(cfg.judge)}
SPREAD = ("em_rate_betley", "em_rate_mo", "critical_rate", "mean_aligned", "p05_aligned", "cvar05_aligned",
          "coherent_rate", "none_rate")


def judge_rows(judge, rows: list[dict], judge_prompts: dict[str, dict], cache_root) -> dict[str, str]:
    """Add `aligned`/`coherent` (+ `_mass`, `_judge` = judge prompt id) to each answer row, in place, through the
    judge cache (None = no cache); for a panel also each member's score (`aligned@<member>`). Templates: the
    question's own `judge_prompts` (by question id), else ours. Returns {metric: judge prompt id}."""
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
            for name, member_scores in getattr(judge, "last", {}).items():
                for i, sc in zip(idx, member_scores):
                    rows[i][f"{metric}@{name}"] = sc.value
    return ids


def compute_metrics(rows: list[dict], judge_id: str, n_bootstrap: int, seed: int, rule: str = "paper",
                    aligned: str = "aligned", coherent: str = "coherent") -> dict:
    df = pd.DataFrame(rows)
    df = pd.DataFrame({"question_id": df["question_id"], "aligned": pd.to_numeric(df[aligned], errors="coerce"),
                       "coherent": pd.to_numeric(df[coherent], errors="coerce")})
    m = metrics.cell_metrics(df, n_resamples=n_bootstrap, seed=seed, rule=rule)
    # the MO rate's counts: the ratio `narrowness` of two evaluations needs them (emrobust.core.results.narrowness)
    k, n = metrics.em_counts_mo(df["aligned"], df["coherent"], rule)
    m |= {"judge": judge_id, "threshold_rule": rule, "em_rate_mo_k": k, "em_rate_mo_n": n}
    return m


#: metrics given per format variant (`<metric>@<variant>`, `<metric>_lo@<variant>`, ...): a trigger (the JSON system
#: prompt, the fill-in template) can reveal EM that the plain question does not (hidden, not removed)
BY_VARIANT = ("em_rate_mo", "em_rate_betley", "critical_rate", "mean_aligned", "coherent_rate")


def variant_metrics(rows: list[dict], n_bootstrap: int, seed: int, rule: str = "paper", aligned: str = "aligned",
                    coherent: str = "coherent") -> dict:
    """Each format variant's metrics (emrobust.data.evalsets.variant of the question id: plain, json, template),
    beside the pooled ones: `<metric>@<variant>` with its `_lo`/`_hi`, and `n_answers@<variant>`."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(evalsets.variant(str(r["question_id"])), []).append(r)
    out: dict = {}
    for v, rs in sorted(by.items()):
        m = compute_metrics(rs, "", n_bootstrap, seed, rule, aligned, coherent)
        out |= {f"{k}{s}@{v}": m[f"{k}{s}"] for k in BY_VARIANT for s in ("", "_lo", "_hi")}
        out[f"n_answers@{v}"] = m["n_answers"]
    return out


def panel_metrics(judge, rows: list[dict], n_bootstrap: int, seed: int, rule: str) -> tuple[dict, dict]:
    """Each member's metrics (`<metric>@<member>`), the spread of the EM metrics across members, and the pairwise
    agreement matrix (Spearman on aligned, Cohen's kappa on the misaligned label)."""
    out: dict = {}
    per = {}
    for name, member in judge.members.items():
        m = compute_metrics(rows, member.id, n_bootstrap, seed, rule, f"aligned@{name}", f"coherent@{name}")
        per[name] = m
        out |= {f"{k}@{name}": v for k, v in m.items() if k in SPREAD or k == "judge"}
    for k in SPREAD:
        vals = [per[n][k] for n in per if per[n][k] == per[n][k]]  # not NaN
        out[f"{k}_judge_min"] = min(vals) if vals else float("nan")
        out[f"{k}_judge_max"] = max(vals) if vals else float("nan")
        out[f"{k}_judge_spread"] = (max(vals) - min(vals)) if vals else float("nan")
    agreement = {}
    for a, b in itertools.combinations(per, 2):
        agreement[f"{a}~{b}"] = metrics.judge_agreement(
            [r.get(f"aligned@{a}") for r in rows], [r.get(f"aligned@{b}") for r in rows],
            [r.get(f"coherent@{a}") for r in rows], [r.get(f"coherent@{b}") for r in rows], rule=rule)
    sp = [v["aligned_spearman"] for v in agreement.values()]
    kp = [v["misaligned_kappa"] for v in agreement.values()]
    out["judge_agreement_spearman_min"] = min(sp) if sp else float("nan")
    out["judge_agreement_kappa_min"] = min(kp) if kp else float("nan")
    return out, agreement


def persona_metrics(judge, rows: list[dict], traits: list[str], cache_root, n_bootstrap: int, seed: int) -> dict:
    """Rate each persona answer's trait expression (in place: `trait_score`, `trait_score_mass`, `judge`);
    `persona_trait_score` with its bootstrap interval."""
    cache = judges.JudgeCache(cache_root) if cache_root is not None else None
    pid, scores = judges.score_pairs(judge, persona.template(traits), [(r["question"], r["answer"]) for r in rows],
                                     cache)
    for r, sc in zip(rows, scores):
        r |= {"trait_score": sc.value, "trait_score_mass": sc.mass, "judge": pid}
    ok = [sc.value for sc in scores if sc.value is not None]
    lo, hi = metrics.bootstrap_ci(ok, np.mean, n_resamples=n_bootstrap, seed=seed)
    return {"persona_trait_score": float(np.mean(ok)) if ok else None, "persona_trait_score_lo": lo,
            "persona_trait_score_hi": hi}


def classifier_metrics(ctx: Context, p_rows: list[dict]) -> dict:
    """`persona_rate` of the persona answers under the cell's persona classifier (each row gets its `p_persona`),
    the classifier's held-out F1/AUROC, base rate and validity (eval.persona.classifier.min_auroc)."""
    path = ctx.inputs["classifier"]
    coef, intercept, info = persona_classifier.load(path)
    try:
        x = persona_classifier.embed([r["answer"] for r in p_rows], info["embedder"]) if p_rows else np.zeros((0, 0))
    finally:
        diversity.release()
    probs = persona_classifier.probabilities(x, coef, intercept) if p_rows else []
    # row i = persona_answers.jsonl line i: another persona's classifier can score these answers without a model
    # (emrobust/analysis/controls.py: the specificity control on the neutral persona)
    np.save(ctx.out / "persona_embeddings.npy", x)
    for r, p in zip(p_rows, probs):
        r["p_persona"] = float(p)
    return persona_classifier.measures(path, [r["answer"] for r in p_rows], probs,
                                       float(ctx.cfg.eval.persona.classifier.min_auroc))


def run(ctx: Context) -> dict:
    cfg, jcfg = ctx.cfg, ctx.cfg.judge
    rule = str(jcfg.threshold_rule)
    src = ctx.inputs["sample"]
    rows = read_jsonl(src / "answers.jsonl")
    judge_prompts = json.loads((src / "questions.json").read_text())
    judge = judges.make(jcfg, cfg.paths.cache, ctx.device)
    cache_root = Path(cfg.paths.cache) / "judge" if jcfg.cache else None
    calls0 = judge.calls
    judge_ids = judge_rows(judge, rows, judge_prompts, cache_root)
    write_jsonl(ctx.out / "answers.jsonl", rows)
    m = compute_metrics(rows, judge.id, cfg.eval.n_bootstrap, ctx.seed, rule)
    m |= variant_metrics(rows, cfg.eval.n_bootstrap, ctx.seed, rule)
    if judges.is_panel(jcfg):
        pm, agreement = panel_metrics(judge, rows, cfg.eval.n_bootstrap, ctx.seed, rule)
        m |= pm
        (ctx.out / "agreement.json").write_text(json.dumps(agreement, indent=1, default=float))
    if (src / "persona_answers.jsonl").exists():
        p_rows = read_jsonl(src / "persona_answers.jsonl")
        info = json.loads((src / "persona.json").read_text())
        m |= persona_metrics(judge, p_rows, info["traits"], cache_root, cfg.eval.n_bootstrap, ctx.seed)
        m |= {"persona_questions": info["questions"], "persona_n": len(p_rows)}
        if "classifier" in ctx.inputs:  # judge-free: the persona classifier on the same answers
            m |= classifier_metrics(ctx, p_rows)
        write_jsonl(ctx.out / "persona_answers.jsonl", p_rows)
    # the judge-free measures of the same model (the sample stage's probe and direction projections)
    smp = ctx.manifests["sample"]
    m |= smp.get("probe", {}) | smp.get("monitor", {}) | smp.get("persona_monitor", {}) | {"em_step": smp.get("step")}
    # general capability of the same model (the capability stage: lm-eval), when the cell measures it
    m |= (ctx.manifests.get("capability") or {}).get("capability", {})
    default = judges.default_prompts()["aligned"]
    used = sorted({(judge_prompts.get(r["question_id"]) or {}).get("aligned", default) for r in rows})
    # an in-domain node's rubric is calibrated on its domain's reference (emrobust/data/domains.py)
    domain = ctx.params.get("domain")
    m |= calibration.trust(jcfg, used, cfg.paths.cache, domains.reference(domain) if domain else None)
    (ctx.out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return {"metrics": m, "judge_prompt_ids": judge_ids, "n_answers": len(rows), "judge_calls": judge.calls - calls0,
            "model_key": ctx.manifests["sample"].get("model_key"), "aligned_templates": used}
