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


# ---------------------------------------------------------------- power before launch
def pair_sd(n_answers: int, rate: float, seed_sd: float) -> float:
    """SD of one paired difference of EM rates, metric(b) - metric(a), two cells of `n_answers` judged answers each
    near `rate`: each cell's binomial variance rate(1 - rate)/n plus its training run's between-seed variance."""
    return float(np.sqrt(2 * (rate * (1 - rate) / max(n_answers, 1) + seed_sd ** 2)))


def paired_power(delta: float, n_pairs: int, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test over `n_pairs` differences of SD `sd` when the true mean is `delta`."""
    from scipy.stats import nct, t  # lazy: slow import

    if n_pairs < 2:
        return float("nan")
    df = n_pairs - 1
    crit = t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / (sd / np.sqrt(n_pairs))
    if nc > 100:  # scipy's noncentral t is NaN out there; the power is 1 to many digits
        return 1.0
    upper, lower = nct.sf(crit, df, nc), nct.cdf(-crit, df, nc)  # the far tail can come back NaN: it is ~0
    return float(upper + (lower if np.isfinite(lower) else 0.0))


def min_detectable_difference(n_pairs: int, n_answers: int, rate: float, seed_sd: float, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true difference in EM rate between two arms that a two-sided paired t-test over `n_pairs` pairs
    (e.g. seeds x EM datasets) detects with probability `power` at level `alpha`, each cell judging `n_answers`
    answers near `rate` with between-seed SD `seed_sd` (`pair_sd`); inf with fewer than 2 pairs."""
    from scipy.optimize import brentq  # lazy: slow import

    if n_pairs < 2:
        return float("inf")
    sd = pair_sd(n_answers, rate, seed_sd)
    if sd == 0:
        return 0.0
    gap = lambda d: paired_power(d, n_pairs, sd, alpha) - power  # noqa: E731 - rises with d
    hi = sd / np.sqrt(n_pairs)
    while gap(hi) < 0:
        hi *= 2
    return float(brentq(gap, 0.0, hi))
