"""Comparisons between question-diversity levels, paired by seed and EM dataset.

For each trait and each pair of levels (a, b), the cells of level a and level b that share (seed, em_dataset,
and every other axis) form pairs; the effect is the mean over pairs of metric(b) - metric(a), with a
percentile bootstrap interval over pairs and a two-sided bootstrap p-value; p-values are Benjamini–Hochberg
adjusted across all comparisons of one analysis.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

LEVELS = ("very_low", "low", "medium", "high", "full")
PAIR_ON = ["seed", "em_dataset", "eval", "base_model", "introspection"]


def paired_bootstrap(diffs: np.ndarray, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95):
    """(mean, lo, hi, p) of the mean of paired differences; p = two-sided bootstrap p-value for mean 0."""
    d = np.asarray(diffs, float)
    d = d[~np.isnan(d)]
    if len(d) < 2:  # no interval or p-value from a single pair
        return (float(d.mean()) if len(d) else np.nan, np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    p = min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean())) if d.std() > 0 else float(d.mean() == 0)
    return float(d.mean()), float(lo), float(hi), float(p)


def compare_levels(df: pd.DataFrame, metric_names=("em_rate_betley", "cvar05_aligned"), n_resamples: int = 10_000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (trait, metric, level a, level b) with n_pairs, diff (b - a), CI, p and BH-adjusted p."""
    has_axes = "trait" in df and "question_diversity" in df  # not when cells were run without Hydra choices
    ok = df[(df.get("status") == "ok") & df["trait"].ne("none")] if has_axes else df.iloc[0:0]
    keys = [k for k in PAIR_ON if k in ok]
    rows = []
    for trait, t in ok.groupby("trait") if has_axes else []:
        levels = [lv for lv in LEVELS if lv in set(t["question_diversity"])]
        for a, b in combinations(levels, 2):
            ta = t[t["question_diversity"] == a].set_index(keys)
            tb = t[t["question_diversity"] == b].set_index(keys)
            common = ta.index.intersection(tb.index)
            for m in metric_names:
                if m not in t:
                    continue
                diffs = (tb.loc[common, m].astype(float) - ta.loc[common, m].astype(float)).to_numpy()
                mean, lo, hi, p = paired_bootstrap(diffs, n_resamples, seed)
                rows.append({"trait": trait, "metric": m, "level_a": a, "level_b": b, "n_pairs": len(common),
                             "diff_b_minus_a": mean, "diff_lo": lo, "diff_hi": hi, "p": p})
    out = pd.DataFrame(rows, columns=["trait", "metric", "level_a", "level_b", "n_pairs", "diff_b_minus_a", "diff_lo",
                                      "diff_hi", "p", "p_bh"])
    valid = out["p"].notna()
    if valid.any():
        out.loc[valid, "p_bh"] = false_discovery_control(out.loc[valid, "p"].to_numpy(float), method="bh")
    return out
