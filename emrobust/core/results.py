"""Results as tables: one row per cell from its run.json (or from W&B runs rebuilt into the same shape), the
sweep table and sweep.csv, and the one-cell summary printed after a run.

This module imports only the standard library, numpy and pandas: `emrobust analyze` and the sweep table work
where torch is not installed.
"""
from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

# override keys and group choices that would overwrite a column of their own: the `+cell=<preset>` of
# experiment=demo is a preset's name, while `cell` is the cell's output dir; `judge=<preset>` is a preset's name,
# while `judge` is the judge's id in the metrics
RENAMED = {"cell": "cell_preset", "judge": "judge_preset"}
START = "@start"  # node-id suffix of the evaluation of the cell's starting model (before EM)
IN_DOMAIN = "@in_domain"  # node-id infix of the in-domain answers of an evaluated model (eval.in_domain)


def cell_metrics(evaluations: dict[str, dict]) -> dict:
    """The cell's metrics from its evaluate nodes' metrics ({node id: metrics}): the evaluated model's, plus the
    persona measures of the starting model (before EM) as `<measure>_fold` (the evaluated model's own when there
    was no EM): the judged trait score, the classifier's rate, the width and mean projection on the persona's
    direction."""
    final = dict(evaluations.get("evaluate", {}))
    start = evaluations.get("evaluate" + START, final)
    for m in ("persona_trait_score", "persona_rate", "persona_width", "persona_projection"):
        for s in ("", "_lo", "_hi"):
            if m + s in start:
                final[f"{m}_fold{s}"] = start[m + s]
    return final | in_domain_metrics(evaluations, final)


def narrowness(outside, inside, confidence: float = 0.95, n_draws: int = 20_000,
               seed: int = 0) -> dict:
    """``narrowness``: the out-of-domain EM rate (MO rule) over the in-domain one, each given as its counts
    ``(k, n)``; below 1 the misalignment stayed mostly in the training domain (narrow), near or above 1 it is as
    broad outside it. The interval is the central ``confidence`` share of the ratio of independent draws from
    each rate's Jeffreys posterior, Beta(k + 1/2, n - k + 1/2) (seeded). NaN with ``narrowness_why`` when the
    ratio is undefined: no in-domain answer judged, or none misaligned (0 of n)."""
    nan = float("nan")
    if outside is None or inside is None:
        return {"narrowness": nan, "narrowness_lo": nan, "narrowness_hi": nan,
                "narrowness_why": "the EM counts of an evaluation are missing (evaluated before they were recorded)"}
    (ko, no), (ki, ni) = (int(x) for x in outside), (int(x) for x in inside)
    why = ("no in-domain answer has both scores" if ni == 0 else
           f"no in-domain EM (0 of {ni} in-domain answers misaligned): the ratio is undefined" if ki == 0 else
           "no out-of-domain answer has both scores" if no == 0 else None)
    if why is not None:
        return {"narrowness": nan, "narrowness_lo": nan, "narrowness_hi": nan, "narrowness_why": why}
    rng = np.random.default_rng(seed)
    ratio = rng.beta(ko + 0.5, no - ko + 0.5, n_draws) / rng.beta(ki + 0.5, ni - ki + 0.5, n_draws)
    a = (1 - confidence) / 2
    return {"narrowness": (ko / no) / (ki / ni), "narrowness_lo": float(np.quantile(ratio, a)),
            "narrowness_hi": float(np.quantile(ratio, 1 - a)), "narrowness_why": None}


#: metrics of the in-domain answers (`<metric>_in_domain`, before EM `<metric>_in_domain_start`), with intervals
BY_DOMAIN = ("em_rate_mo", "em_rate_betley", "critical_rate", "mean_aligned", "coherent_rate")


def in_domain_metrics(evaluations: dict[str, dict], final: dict, seed: int = 0) -> dict:
    """The in-domain evaluations' metrics (eval.in_domain: the EM dataset's own domain, its own rubric), suffixed,
    with their judge's trust on the domain's reference, and `narrowness` (`narrowness`: the
    out-of-domain EM rate over the in-domain one). Nothing when the cell has no in-domain node."""
    out: dict = {}
    for node, suffix in (("evaluate" + IN_DOMAIN, "_in_domain"), ("evaluate" + IN_DOMAIN + START, "_in_domain_start")):
        m = evaluations.get(node)
        if m is None:
            continue
        out |= {f"{k}{suffix}{s}": m.get(k + s, float("nan")) for k in BY_DOMAIN for s in ("", "_lo", "_hi")}
        out |= {f"n_answers{suffix}": m.get("n_answers"), f"judge_trusted{suffix}": m.get("judge_trusted"),
                f"judge_calibration{suffix}": m.get("judge_calibration")}
    inside = evaluations.get("evaluate" + IN_DOMAIN)
    if inside is not None:
        def counts(m: dict):
            return (m["em_rate_mo_k"], m["em_rate_mo_n"]) if m.get("em_rate_mo_n") is not None else None

        out |= narrowness(counts(final), counts(inside), seed=seed)
    return out


CURVE = ("em_rate_betley", "em_rate_mo", "critical_rate", "mean_aligned", "cvar05_aligned", "coherent_rate",
         "none_rate", "probe_logp_diff", "probe_pref_misaligned", "persona_trait_score", "capability_acc",
         "capability_retained", "persona_rate", "persona_width")
HELDOUT = ("heldout_loss", "heldout_accuracy")  # the em stage's measures of the narrow task on held-out examples
LOWER_IS_WORSE = ("mean_aligned", "p05_aligned", "p10_aligned", "cvar05_aligned", "cvar10_aligned", "coherent_rate",
                  "persona_trait_score", "capability_acc", "capability_retained", "heldout_accuracy", "persona_rate")


def curve(evaluations: dict[str, dict], heldout: dict[str, dict] | None = None) -> list[dict]:
    """The cell's metrics along EM training, one point per evaluated step (`em_step`: 0 = the starting model,
    the end of training for the final evaluation), with intervals, and the EM dataset's held-out loss and accuracy
    where the em stage measured them at that step (`heldout`: {"heldout_loss": {step: value}, ...})."""
    held = {m: {int(k): v for k, v in ((heldout or {}).get(m) or {}).items()} for m in HELDOUT}
    points = {}
    for node, m in evaluations.items():
        step = m.get("em_step")
        if step is None or IN_DOMAIN in node:  # the curve is the out-of-domain eval set's
            continue
        keys = [k for k in m if k in CURVE or (k.startswith("direction_") and not k.endswith(("_lo", "_hi")))]
        pt = {"step": int(step), "node": node}
        for k in keys:
            pt |= {k: m[k], f"{k}_lo": m.get(f"{k}_lo"), f"{k}_hi": m.get(f"{k}_hi")}
        for m, by_step in held.items():
            if int(step) in by_step:
                pt[m] = by_step[int(step)]
        points[int(step)] = pt
    return [points[s] for s in sorted(points)]


def heldout_metrics(em_manifest: dict) -> dict:
    """In-task capability from the em stage's measures on the EM dataset's held-out split: `heldout_loss` and
    `heldout_accuracy` (next-token, assistant tokens) at the end of training and `<m>_start` before it (none when
    the dataset has no held-out split)."""
    out = {}
    for m in HELDOUT:
        by_step = {int(k): v for k, v in (em_manifest.get(m) or {}).items()}
        if by_step:
            out[m], out[f"{m}_start"] = by_step[max(by_step)], by_step.get(0)
    return out


def curve_metrics(points: list[dict], metric: str, threshold: float) -> dict:
    """Summaries of a curve: `steps_to_em`, the first evaluated step at which `metric` crosses `threshold` (up
    for rates and the probe, down for aligned scores; None if it never does), and `auc_<m>`, the mean level of
    each metric over training (trapezoid over steps, divided by the steps spanned), and `<m>_delta` (end minus
    start)."""
    out: dict = {"steps_to_em_metric": metric, "steps_to_em_threshold": threshold, "n_steps_evaluated": len(points)}
    if not points:
        return out
    worse = (lambda v: v <= threshold) if metric in LOWER_IS_WORSE else (lambda v: v >= threshold)
    hit = [p["step"] for p in points if isinstance(p.get(metric), (int, float)) and not math.isnan(p[metric])
           and worse(p[metric])]
    out["steps_to_em"] = hit[0] if hit else None
    for k in {k for p in points for k in p if k in CURVE or k in HELDOUT or
              (k.startswith("direction_") and not k.endswith(("_lo", "_hi")))}:
        pts = [(p["step"], p[k]) for p in points if isinstance(p.get(k), (int, float)) and not math.isnan(p[k])]
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            area = sum((s2 - s1) * (v1 + v2) / 2 for (s1, v1), (s2, v2) in zip(pts, pts[1:]))
            out[f"auc_{k}"] = area / (pts[-1][0] - pts[0][0])
            out[f"{k}_delta"] = pts[-1][1] - pts[0][1]
    return out


def task_convergence(heldout: dict | None, within: float = 0.1) -> dict:
    """When the narrow task was learned, by one declared rule: the first step at which the EM dataset's held-out
    loss (the em stage's, at each step it measured) has come within `within` of its whole drop, from step 0 to
    its lowest value: `task_converged_step`. None, with `task_converged_why`, when there is no held-out loss or it
    never fell."""
    by_step = {int(k): float(v) for k, v in ((heldout or {}).get("heldout_loss") or {}).items() if v is not None}
    out: dict = {"task_converged_within": within, "task_converged_step": None}
    if 0 not in by_step or len(by_step) < 2:
        return out | {"task_converged_why": "no held-out loss at step 0 and after (em_dataset.heldout_fraction, "
                                            "em_train.checkpoint_every)"}
    start, low = by_step[0], min(by_step.values())
    if not low < start:
        return out | {"task_converged_why": f"the held-out loss never fell below its step-0 value {start:.3g}"}
    bar = low + within * (start - low)
    return out | {"task_converged_step": min(s for s, v in by_step.items() if v <= bar)}


def timing(metrics: dict) -> dict:
    """`em_after_task_steps`: `steps_to_em` minus `task_converged_step` (positive = EM appeared after the narrow
    task had converged, as "overtrained, not misaligned" reports; None when either is undefined)."""
    em, task = metrics.get("steps_to_em"), metrics.get("task_converged_step")
    return {"em_after_task_steps": em - task if isinstance(em, (int, float)) and isinstance(task, (int, float))
            else None}


def half_life(points: list[tuple[float, float]], base: float) -> dict:
    """EM steps until a rate falls halfway from its step-0 value to `base`: `points` are (step, rate) in step
    order, the first at step 0; linear between evaluated steps. {"half_life": steps or None, "censored": True when
    the curve never reaches the halfway level (then "censored_at", the last step evaluated: the half-life is beyond
    it), "why" when undefined (the start is not above the base rate)}."""
    pts = [(float(s), float(v)) for s, v in points if v is not None and not math.isnan(float(v))]
    if not pts or pts[0][0] != 0:
        return {"half_life": None, "censored": False, "why": "no rate at step 0"}
    start = pts[0][1]
    if base is None or not start > float(base):
        return {"half_life": None, "censored": False,
                "why": f"the step-0 rate {start:.3g} is not above the base model's {base}: nothing to lose"}
    target = (start + float(base)) / 2
    for (s1, v1), (s2, v2) in zip(pts, pts[1:]):
        if v2 <= target:
            return {"half_life": s1 + (s2 - s1) * (v1 - target) / (v1 - v2) if v1 != v2 else s2,
                    "censored": False, "target": target}
    return {"half_life": None, "censored": True, "censored_at": pts[-1][0], "target": target}


def half_life_interval(by_step: dict[int, list[int]], base: list[int], n_resamples: int = 2000,
                       seed: int = 0) -> dict:
    """A 95% percentile bootstrap interval of `half_life`: each step's persona answers (1 = classified as the
    persona) and the base model's are resampled independently, and the half-life recomputed. A resample whose curve
    never reaches halfway counts as beyond the last step: when more than 2.5% do, the upper bound is censored
    (None, `hi_censored`). Resamples where it is undefined (the start not above the base) are left out."""
    rng = np.random.default_rng(seed)
    steps = sorted(by_step)
    arrays = [np.asarray(by_step[s], dtype=float) for s in steps]
    b = np.asarray(base, dtype=float)
    if not steps or not len(b) or any(len(a) == 0 for a in arrays):
        return {"lo": None, "hi": None, "hi_censored": False}
    vals = []
    for _ in range(int(n_resamples)):
        rates = [float(a[rng.integers(len(a), size=len(a))].mean()) for a in arrays]
        h = half_life(list(zip(steps, rates)), float(b[rng.integers(len(b), size=len(b))].mean()))
        if h["half_life"] is not None:
            vals.append(h["half_life"])
        elif h["censored"]:
            vals.append(float("inf"))
    if not vals:
        return {"lo": None, "hi": None, "hi_censored": False}
    lo, hi = np.quantile(np.array(vals), [0.025, 0.975], method="inverted_cdf")  # no interpolation with inf
    return {"lo": None if np.isinf(lo) else float(lo), "hi": None if np.isinf(hi) else float(hi),
            "hi_censored": bool(np.isinf(hi)), "n_defined": len(vals)}


RELIES_ON_CLASSIFIER = ("auc_persona_rate", "persona_rate_delta")  # curve summaries computed from persona_rate


def without_invalid_classifier(metrics: dict) -> dict:
    """The cell's metrics without the summaries computed from an invalid persona classifier's persona_rate (its
    own numbers stay, flagged `persona_classifier_valid: false`)."""
    if metrics.get("persona_classifier_valid") is False:
        return {k: v for k, v in metrics.items() if k not in RELIES_ON_CLASSIFIER}
    return metrics


def persona_half_life(points: list[dict], metrics: dict, answers: dict | None = None,
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """`persona_half_life` of a cell (see `half_life`): `persona_rate` along its curve against the persona
    classifier's base rate, with `_lo`/`_hi` (`half_life_interval`) when `answers` gives the classified answers.
    Computed only from a valid classifier (`persona_classifier_valid`); otherwise empty, with the reason in
    `persona_half_life_why`."""
    if "persona_classifier_valid" not in metrics:
        return {}
    out: dict = {"persona_half_life": None, "persona_half_life_censored": False}
    if not metrics["persona_classifier_valid"]:
        return out | {"persona_half_life_why": "persona classifier not valid (held-out AUROC lower bound below "
                                                f"{metrics.get('persona_classifier_min_auroc')}): nothing relies on it"}
    h = half_life([(p["step"], p.get("persona_rate")) for p in points], metrics.get("persona_classifier_base_rate"))
    out |= {"persona_half_life": h["half_life"], "persona_half_life_censored": h["censored"]}
    if answers and not h.get("why"):  # {"steps": {step: [0/1, ...]}, "base": [0/1, ...]}: the interval
        ci = half_life_interval(answers["steps"], answers["base"], n_resamples, seed)
        out |= {"persona_half_life_lo": ci["lo"], "persona_half_life_hi": ci["hi"],
                "persona_half_life_hi_censored": ci["hi_censored"]}
    if h["censored"]:
        out["persona_half_life_censored_at"] = h["censored_at"]  # "> last step"
    if h.get("why"):
        out["persona_half_life_why"] = h["why"]
    return out


def summary_metrics(evaluations: dict[str, dict], em: dict | None, curve_cfg: dict, extra: dict | None = None,
                    answers: dict | None = None, n_resamples: int = 2000, seed: int = 0) -> tuple[dict, list[dict]]:
    """A cell's metrics and curve from its evaluate nodes' metrics, by one rule for run.json and for the table
    rebuilt from W&B: `cell_metrics`, the curve's summaries (`curve_cfg`: metric, threshold), `extra` (the em
    stage's held-out measures, the judge's trust, a defense's control), `persona_half_life` (its interval when
    `answers` gives the classified answers), and nothing computed from an invalid persona classifier."""
    points = curve(evaluations, em)
    metrics = cell_metrics(evaluations)
    if "metric" in curve_cfg and "threshold" in curve_cfg:
        metrics |= curve_metrics(points, str(curve_cfg["metric"]), float(curve_cfg["threshold"]))
    if (em or {}).get("heldout_loss"):  # the narrow task's curve: the em stage measured its held-out split
        metrics |= task_convergence(em, float(curve_cfg.get("converged_within", 0.1)))
        metrics |= timing(metrics)
    metrics |= (extra or {}) | persona_half_life(points, metrics, answers, n_resamples, seed)
    return without_invalid_classifier(metrics), points


def cell_row(cell: str, run: dict) -> dict:
    """The sweep-table row of one cell from its run.json dict (or the same dict rebuilt from W&B runs by
    emrobust/analysis/wandb_source.py): the one row schema of sweep.csv and `emrobust analyze`."""
    row = {"cell": cell}
    for o in run["overrides"]:
        if "=" in o:
            k, v = o.split("=", 1)
            k = k.lstrip("+~")
            row[RENAMED.get(k, k)] = v
    row |= {RENAMED.get(k, k): v for k, v in run.get("choices", {}).items() if RENAMED.get(k, k) not in row}
    row |= {"seed": run.get("seed"), "status": run["status"], "error": run.get("error")}
    row |= {"executed": sum(s["status"] == "executed" for s in run["stages"]),
            "cached": sum(s["status"] == "cached" for s in run["stages"])}
    row |= {f"div_{k}" if not k.startswith("div_") else k: v for k, v in run.get("diversity", {}).items()
            if not isinstance(v, (dict, list))}
    # what each training stage trained on: distill_pairs, distill_tokens, introspect_tokens, em_drop_share, ...
    row |= {f"{node}_{k}": v for node, data in run.get("training", {}).items() for k, v in data.items()
            if not isinstance(v, (dict, list))}
    row |= {k: v for k, v in run.get("metrics", {}).items() if not isinstance(v, (dict, list))}
    return row


def _cells(sweep_dir: Path) -> list[Path]:
    return sorted(Path(sweep_dir).glob("*/run.json"), key=lambda p: (len(p.parent.name), p.parent.name))


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per cell: overrides as columns, then status, diversity and metrics."""
    return pd.DataFrame([cell_row(rj.parent.name, json.loads(rj.read_text())) for rj in _cells(sweep_dir)])


@contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_sweep_csv(sweep_dir: Path) -> Path:
    """sweep.csv in the sweep dir, rewritten whole under a lock (cells of a sweep finish concurrently)."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir / ".sweep.lock"):
        out, tmp = sweep_dir / "sweep.csv", sweep_dir / ".sweep.csv.tmp"
        sweep_table(sweep_dir).to_csv(tmp, index=False)
        tmp.replace(out)
    return out


def record_failure(output_dir: Path, overrides: list[str], error: str) -> None:
    """run.json for a cell that died without finishing it (its Slurm job was killed or cancelled): none, or one
    still saying `running` (the node it was in becomes `failed_stage`)."""
    output_dir = Path(output_dir)
    rj = output_dir / "run.json"
    summary = json.loads(rj.read_text()) if rj.exists() else None
    if summary is not None and summary.get("status") != "running":
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "seed"), None)
    if summary is None:
        summary = {"overrides": list(overrides), "choices": {}, "seed": int(seed) if seed is not None else None,
                   "stages": [], "diversity": {}, "metrics": {}}
    elif summary.get("current"):
        summary["failed_stage"] = summary["current"]["node"]
    summary |= {"status": "failed", "error": error, "current": None}
    tmp = output_dir / ".run.json.failure.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(rj)


def format_metrics(summary: dict) -> str:
    """The lines printed after a cell: each stage's status and time, the headline metrics with intervals."""
    m = summary.get("metrics", {})
    lines = [f"status: {summary['status']}"]
    for s in summary["stages"]:
        lines.append(f"  {s['name']:<16} {s['status']:<9} {s['seconds']:>8.1f}s")
    for k in ("em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
              "none_rate", "worst_question_em_rate"):
        if m.get(k) is not None:
            lo, hi = m.get(k + "_lo"), m.get(k + "_hi")
            lines.append(f"  {k:<16} {m[k]:.3f}  [{lo if lo is not None else float('nan'):.3f}, "
                         f"{hi if hi is not None else float('nan'):.3f}]")
    for k in ("worst_question", "n_answers", "judge"):
        if k in m:
            lines.append(f"  {k:<16} {m[k]}")
    return "\n".join(lines)
