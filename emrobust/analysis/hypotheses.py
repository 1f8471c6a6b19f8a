"""The study's hypotheses, one function per experiment (conf/experiment/<name>.yaml and its `_cpu` twin): which
arms it compares, on which metrics, and the comparisons themselves.

Each function takes the sweep table (`emrobust.core.results.cell_row` rows: one per cell) and returns one row per
(contrast, metric): arm b minus arm a, paired over the cells the two arms share every axis of `PAIR_ON` with
(seed, EM dataset, eval set, base model), the mean paired difference with a percentile bootstrap interval and a
two-sided bootstrap p-value (`stats.paired_bootstrap`), Benjamini-Hochberg adjusted over the experiment's own
comparisons (scipy's `false_discovery_control`). The same arms serve the planner: `emrobust sweep --dry-run` builds
the table of the cells it would run (no metrics) and asks `contrasts` how many pairs each comparison will have, for
its minimum detectable difference (`stats.min_detectable_difference`).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from .stats import LEVELS, paired_bootstrap

PAIR_ON = ("seed", "em_dataset", "eval", "base_model")
NONE = {"trait": "none"}
EM = ("em_rate_betley", "em_rate_mo", "cvar05_aligned")
COLUMNS = ["hypothesis", "contrast", "metric", "arm_a", "arm_b", "n_pairs", "effect", "lo", "hi", "p", "p_bh"]


@dataclass(frozen=True)
class Contrast:
    label: str  # "b vs a", as the report prints it
    a: dict  # column -> value: the cells of arm a
    b: dict


@dataclass(frozen=True)
class Hypothesis:
    name: str  # the experiment
    title: str
    question: str
    arms: Callable[[pd.DataFrame], list[Contrast]]  # the comparisons the table's cells allow
    metrics: tuple[str, ...]
    note: str = ""


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name].astype(str) if name in df else pd.Series(["nan"] * len(df), index=df.index)


def select(df: pd.DataFrame, arm: dict) -> pd.DataFrame:
    """The rows of `df` in `arm` ({column: value})."""
    mask = pd.Series(True, index=df.index)
    for k, v in arm.items():
        mask &= _col(df, k) == str(v)
    return df[mask]


def pairs(df: pd.DataFrame, c: Contrast) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells of arm a and arm b that share every axis of PAIR_ON present in the table, aligned row by row."""
    on = [k for k in PAIR_ON if k in df]
    a, b = select(df, c.a), select(df, c.b)
    if not on:
        return a.iloc[0:0], b.iloc[0:0]
    a = a.drop_duplicates(on).set_index(on)
    b = b.drop_duplicates(on).set_index(on)
    common = a.index.intersection(b.index)
    return a.loc[common], b.loc[common]


def _persona(df: pd.DataFrame) -> str | None:
    """The persona of an experiment over one persona: the trait of its cells that is neither none nor neutral."""
    traits = [t for t in _col(df, "trait").unique() if t not in ("none", "neutral", "nan")]
    return traits[0] if len(traits) == 1 else None


def _vs_none(df: pd.DataFrame, arm: dict, label: str) -> list[Contrast]:
    return [Contrast(f"{label} vs no persona", NONE, arm)] if len(select(df, NONE)) and len(select(df, arm)) else []


# ---------------------------------------------------------------- the experiments' arms
def diversity_arms(df: pd.DataFrame) -> list[Contrast]:
    p = _persona(df)
    if p is None:
        return []
    levels = [lv for lv in LEVELS if len(select(df, {"trait": p, "question_diversity": lv}))]
    level = lambda lv: {"trait": p, "question_diversity": lv}  # noqa: E731
    out = [Contrast(f"{b} vs {a} diversity", level(a), level(b)) for a, b in combinations(levels, 2)]
    for lv in levels:
        out += _vs_none(df, {"trait": p, "question_diversity": lv}, f"{p} {lv}")
    neutral = {"trait": "neutral"}
    out += _vs_none(df, neutral, "neutral")
    if len(select(df, neutral)) and "medium" in levels:  # the trait itself, at equal diversity
        out.append(Contrast(f"{p} medium vs neutral medium", neutral, {"trait": p, "question_diversity": "medium"}))
    return out


def introspection_arms(df: pd.DataFrame) -> list[Contrast]:
    p = _persona(df)
    if p is None:
        return []
    modes = [m for m in ("none", "reflection", "interaction", "full")
             if len(select(df, {"trait": p, "introspection": m}))]
    arm = lambda m: {"trait": p, "introspection": m}  # noqa: E731
    out = [Contrast(f"{m} vs no introspection", arm("none"), arm(m)) for m in modes if m != "none" and "none" in modes]
    out += [Contrast(f"full vs {m} alone", arm(m), arm("full")) for m in ("reflection", "interaction")
            if m in modes and "full" in modes]
    for m in modes:
        out += _vs_none(df, arm(m), f"{p} ({m})")
    return out


def consistency_arms(df: pd.DataFrame) -> list[Contrast]:
    mix = {"trait": "mixture"}
    if not len(select(df, mix)):
        return []
    consistent = [t for t in _col(df, "trait").unique() if t not in ("none", "mixture", "nan")]
    out = [Contrast(f"mixture vs {t}", {"trait": t}, mix) for t in consistent]
    out += _vs_none(df, mix, "mixture")
    for t in consistent:
        out += _vs_none(df, {"trait": t}, t)
    return out


def dose_arms(df: pd.DataFrame) -> list[Contrast]:
    persona = df[_col(df, "trait") != "none"]
    if "cell_preset" not in persona or persona.empty:
        return []
    steps = pd.to_numeric(persona["distill_steps"], errors="coerce") if "distill_steps" in persona else None
    order = (persona.assign(_s=steps).groupby("cell_preset")["_s"].mean().sort_values().index.tolist()
             if steps is not None and steps.notna().any() else sorted(persona["cell_preset"].astype(str).unique()))
    ref = "persona_dose_1" if "persona_dose_1" in order else order[0]
    arm = lambda c: {"cell_preset": c}  # noqa: E731
    out = [Contrast(f"{c} vs {ref}", arm(ref), arm(c)) for c in order if c != ref]
    for c in order:
        out += _vs_none(df, arm(c), c)
    return out


def replication_arms(df: pd.DataFrame) -> list[Contrast]:
    out = []
    for t in sorted(_col(df, "trait").unique()):
        if t not in ("none", "nan"):
            out += _vs_none(df, {"trait": t}, t)
    return out


HYPOTHESES: dict[str, Hypothesis] = {h.name: h for h in [
    Hypothesis("diversity_sweep", "question diversity at equal data",
               "Does the protection track the diversity of the questions the persona is trained on, rather than the "
               "persona's trait? (levels against each other; each level, and the neutral persona, against no persona; "
               "the persona against the neutral one at the same diversity)", diversity_arms, EM),
    Hypothesis("introspection_ablation", "introspection as the identity anchor",
               "Does OCT's second stage (self-reflection, self-interaction) carry the protection, beyond DPO alone? "
               "(each mode against none; full against each part; every arm against no persona; persona_trait_score: "
               "how much of the persona is left after EM)", introspection_arms, (*EM, "persona_trait_score"),
               note="What an introspection arm adds to DPO alone is what the fold adds: by default OCT's merge "
                    "(fold.combination=peft_linear), the SFT update at fold.introspection_weight 0.25 plus PEFT's "
                    "cross terms sqrt(w s_dpo w s_sft)(B_dpo A_sft + B_sft A_dpo), not the SFT update as trained; "
                    "each cell's fold manifest records its combination and weights (fold.combination=exact reads "
                    "introspection's own update cleanly)."),
    Hypothesis("persona_consistency", "a consistent persona against an assembled one",
               "Does a psychologically consistent constitution protect more than one assembled from traits of several "
               "that do not belong together, at equal questions and pairs? (the mixture against each consistent "
               "persona, and each against no persona)", consistency_arms, (*EM, "persona_trait_score")),
    Hypothesis("character_dose", "character-training dose against the EM trajectory",
               "Is a persona trained harder harder to overwrite? (each dose against OCT's one epoch, each against no "
               "persona; steps_to_em: the first evaluated EM step at the threshold, higher = later; auc_em_rate_mo: "
               "the mean EM rate along training; heldout_loss_delta: how much of the narrow EM task was learnt)",
               dose_arms, ("steps_to_em", "auc_em_rate_mo", "em_rate_mo", "heldout_loss_delta"),
               note="A cell whose EM rate never reached the threshold counts at its last EM step (censored: a lower "
                    "bound of its steps_to_em)."),
    Hypothesis("seed_replication", "the seed study, replicated without its confounds",
               "Does each OCT persona lower EM against no persona, with the same EM initialisation, equal data, "
               "measured retention and a calibrated judge? (paired over seeds, EM datasets and base models)",
               replication_arms, ("em_rate_mo", "em_rate_betley", "mean_aligned")),
]}
ALIASES = {"demo": "diversity_sweep"}  # the demo is the diversity sweep's arms at the demo trait


def hypothesis_of(experiment) -> Hypothesis | None:
    """The hypothesis an experiment (or its `_cpu` twin) tests, if any."""
    if not isinstance(experiment, str):
        return None
    name = experiment.removesuffix("_cpu")
    return HYPOTHESES.get(ALIASES.get(name, name))


def _censored(df: pd.DataFrame) -> pd.DataFrame:
    """steps_to_em of cells whose EM rate never reached the threshold: their last EM step (a lower bound)."""
    if "steps_to_em" not in df:
        return df
    df = df.copy()
    steps = pd.to_numeric(df["steps_to_em"], errors="coerce")
    last = pd.to_numeric(df["em_steps"], errors="coerce") if "em_steps" in df else pd.Series(np.nan, index=df.index)
    df["steps_to_em"] = steps.fillna(last)
    return df


def compare(h: Hypothesis, df: pd.DataFrame, n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per (contrast, metric) of `h` on the table's ok cells, BH-adjusted over them all."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    ok = _censored(ok)
    rows = []
    for c in h.arms(ok):
        a, b = pairs(ok, c)
        for m in h.metrics:
            if m not in ok:
                continue
            diffs = (pd.to_numeric(b[m], errors="coerce") - pd.to_numeric(a[m], errors="coerce")).to_numpy(float)
            mean, lo, hi, p = paired_bootstrap(diffs, n_resamples, seed)
            rows.append({"hypothesis": h.name, "contrast": c.label, "metric": m, "arm_a": _arm(c.a),
                         "arm_b": _arm(c.b), "n_pairs": int(np.isfinite(diffs).sum()), "effect": mean, "lo": lo,
                         "hi": hi, "p": p})
    out = pd.DataFrame(rows, columns=COLUMNS)
    valid = out["p"].notna()
    if valid.any():
        out.loc[valid, "p_bh"] = false_discovery_control(out.loc[valid, "p"].to_numpy(float), method="bh")
    return out


def _arm(arm: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in arm.items())


def diversity_sweep(df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    return compare(HYPOTHESES["diversity_sweep"], df, n_resamples)


def introspection_ablation(df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    return compare(HYPOTHESES["introspection_ablation"], df, n_resamples)


def persona_consistency(df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    return compare(HYPOTHESES["persona_consistency"], df, n_resamples)


def character_dose(df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    return compare(HYPOTHESES["character_dose"], df, n_resamples)


def seed_replication(df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    return compare(HYPOTHESES["seed_replication"], df, n_resamples)


def planned_pairs(h: Hypothesis, df: pd.DataFrame) -> list[tuple[str, int]]:
    """(contrast, pairs it will have) for the cells a sweep would run (the planner's table: no metrics)."""
    return [(c.label, len(pairs(df, c)[0])) for c in h.arms(df)]


def reading(r) -> str:
    if not (r["n_pairs"] >= 2 and np.isfinite(r["lo"])):
        return "too few pairs for an interval"
    if r["lo"] > 0:
        return "b above a"
    if r["hi"] < 0:
        return "b below a"
    return "no detectable difference"


def section(h: Hypothesis, table: pd.DataFrame) -> list[str]:
    """The report's lines for one hypothesis: the question, how it is compared, one row per contrast and metric."""
    lines = [f"## Hypothesis: {h.title} (experiment={h.name})\n", h.question + "\n",
             f"Each row: arm b minus arm a, the mean over the cells they pair on ({', '.join(PAIR_ON)}), a 95% "
             "bootstrap interval over pairs and a two-sided bootstrap p, Benjamini-Hochberg adjusted over the "
             + (f"{n} comparisons of this section that have a p (p_bh). " if (n := int(table["p"].notna().sum())) else
                "comparisons of this section that have a p (p_bh): none here, every one has too few pairs (one seed "
                "gives one pair). ") + h.note + "\n"]
    if table.empty:
        return lines + ["_No two arms of this experiment share a seed, EM dataset, eval set and base model among "
                        "the ok cells._\n"]
    fmt = lambda v: "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"  # noqa: E731
    lines += ["| contrast (b vs a) | metric | pairs | effect (b - a) | 95% interval | p | p_bh | reading |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        ci = f"[{fmt(r['lo'])}, {fmt(r['hi'])}]" if np.isfinite(r["lo"]) else ""
        lines.append(f"| {r['contrast']} | {r['metric']} | {r['n_pairs']} | {fmt(r['effect'])} | {ci} | {fmt(r['p'])} "
                     f"| {fmt(r['p_bh'])} | {reading(r)} |")
    return lines + [""]
