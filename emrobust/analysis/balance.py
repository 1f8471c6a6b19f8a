"""Equal data across the cells a contrast compares: the balance check of the report.

A contrast is what `stats.compare_levels` pairs: the question-diversity levels of one trait that share every
other axis (seed, EM dataset, eval set, base model, introspection). For each, the table lists per cell what its
training stages trained on (run.json `training`, the `<stage>_<field>` columns of the sweep table): DPO pairs,
tokens (chosen + rejected) and mean answer lengths, introspection examples and tokens, EM examples, tokens and
the share dropped at max_length (with the share the cell allowed). A contrast is *imbalanced* when its cells'
training tokens of one stage differ by more than the tolerance: (max - min) / min > tolerance.
"""
from __future__ import annotations

import pandas as pd

from .stats import LEVELS, PAIR_ON

TOKENS = ("distill_tokens", "introspect_tokens")  # what the persona is trained on, the contrast's variable's data
COLUMNS = ["distill_pairs", "distill_tokens", "distill_mean_chosen_tokens", "distill_mean_rejected_tokens",
           "introspect_examples", "introspect_tokens", "em_examples", "em_tokens", "em_drop_share",
           "em_max_drop_share"]


def contrasts(df: pd.DataFrame) -> pd.DataFrame:
    """One row per persona cell that has training data, with its contrast (the trait and every axis but the
    diversity level) and the training columns the table shows; only contrasts of two cells or more."""
    if "question_diversity" not in df or "trait" not in df or "distill_tokens" not in df:
        return pd.DataFrame(columns=["contrast", "question_diversity", *COLUMNS])
    ok = df[(df.get("status") == "ok") & df["trait"].ne("none") & df["distill_tokens"].notna()]
    axes = [k for k in ["trait", *PAIR_ON] if k in ok]
    ok = ok.assign(contrast=ok[axes].astype(str).apply(lambda r: " ".join(f"{k}={v}" for k, v in r.items()), axis=1))
    ok = ok[ok.groupby("contrast")["question_diversity"].transform("nunique") > 1]
    rank = {lv: i for i, lv in enumerate(LEVELS)}
    ok = ok.assign(_lv=ok["question_diversity"].map(lambda v: rank.get(v, len(rank))))
    cols = ["contrast", "question_diversity", *[c for c in COLUMNS if c in ok]]
    return ok.sort_values(["contrast", "_lv"])[cols].reset_index(drop=True)


def imbalanced(table: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per contrast and token measure whose cells differ by more than `tolerance`: the least and most."""
    rows = []
    for contrast, g in table.groupby("contrast", sort=False):
        for col in TOKENS:
            if col not in g or g[col].isna().all():
                continue
            v = g[col].astype(float)
            lo, hi = v.min(), v.max()
            spread = (hi - lo) / lo if lo > 0 else float("inf")
            if spread > tolerance:
                rows.append({"contrast": contrast, "measure": col, "spread": spread,
                             "least": f"{g.loc[v.idxmin(), 'question_diversity']} {lo:.0f}",
                             "most": f"{g.loc[v.idxmax(), 'question_diversity']} {hi:.0f}"})
    return pd.DataFrame(rows, columns=["contrast", "measure", "spread", "least", "most"])


def headline(table: pd.DataFrame, flagged: pd.DataFrame, tolerance: float, df: pd.DataFrame) -> list[str]:
    """The report's first lines on data balance (and the EM drop share the cells allowed)."""
    n = table["contrast"].nunique() if len(table) else 0
    if not n:
        lines = ["Balance: no contrast with recorded training data (training stages of this emrobust version "
                 "record it in run.json)."]
    elif flagged.empty:
        lines = [f"Balance: OK, the cells of every contrast ({n}) are within {tolerance:.0%} of each other in "
                 "training tokens."]
    else:
        worst = flagged.sort_values("spread", ascending=False).iloc[0]
        lines = [f"**Balance: {flagged['contrast'].nunique()} of {n} contrasts differ by more than {tolerance:.0%} "
                 f"in training tokens** (worst: {worst['measure']} {worst['least']} vs {worst['most']}, "
                 f"+{worst['spread']:.0%}, {worst['contrast']}); see *Training data per contrast*."]
    if "em_drop_share" in df and df["em_drop_share"].notna().any():
        allowed = sorted(df["em_max_drop_share"].dropna().unique()) if "em_max_drop_share" in df else []
        lines.append(f"EM examples dropped at max_length: at most {df['em_drop_share'].max():.1%} of a cell's "
                     f"dataset (allowed: {', '.join(f'{a:.0%}' for a in allowed) or 'not recorded'}).")
    return lines
