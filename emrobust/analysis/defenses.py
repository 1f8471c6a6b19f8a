"""Defenses side by side: each cell's EM tail against the capability it kept, and the Pareto front.

One point per cell (every seed its own point), in arms: `no persona` (trait=none, defense=none), `persona` (a
persona, defense=none), and each defense (`kl`, `inoculation`, ...; `+persona` when a defense runs on a persona).
x: `capability_retained`, general capability after EM minus before it, paired over the same lm-eval documents
(the capability stage; 0 = nothing lost), with its bootstrap interval; a second panel puts the in-task measure on x,
the EM dataset's held-out next-token accuracy at the end of training (did the defense stop the narrow task being
learned?). y: the EM tail, `cvar05_aligned` (mean aligned score of the worst 5% of answers; higher = a milder tail)
with its interval. A cell is on the Pareto front when no cell of the same EM dataset is at least as good on both
axes and better on one (point estimates; the intervals show how much that can be trusted). Column `hidden`: whether
the arm lowers EM under the plain question only, or under the triggered formats too (emrobust.analysis.variants).
Columns `em_rate_mo_in_domain` and `narrowness` (eval.in_domain): the same model on its EM dataset's own domain
(emrobust.analysis.narrowness); empty when the cells did not answer in-domain questions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import variants

TAIL = "cvar05_aligned"  # higher = milder tail of misalignment
RETAINED = "capability_retained"  # after minus before EM, higher = more kept
IN_TASK = "heldout_accuracy"  # the narrow task, learned
COLUMNS = ["cell", "arm", "em_dataset", "seed", TAIL, f"{TAIL}_lo", f"{TAIL}_hi", "em_rate_mo", "em_rate_mo_lo",
           "em_rate_mo_hi", "capability_acc", RETAINED, f"{RETAINED}_lo", f"{RETAINED}_hi", IN_TASK,
           "heldout_loss", "em_rate_mo@plain", "em_rate_mo@json", "em_rate_mo@template", "em_rate_mo@context", "hidden",
           "em_rate_mo_in_domain", "narrowness", "pareto"]


def arm(row: pd.Series) -> str:
    d = row.get("defense")
    d = "none" if d is None or (isinstance(d, float) and np.isnan(d)) else str(d)
    persona = str(row.get("trait", "none")) not in ("none", "nan")
    if d == "none":
        return "persona" if persona else "no persona"
    if d == "interleave" and str(row.get("interleave_select")) == "perplexity_gap":
        d = "interleave_gap"  # the benign examples chosen by perplexity gap, not drawn
    return f"{d}+persona" if persona else d


def applies(df: pd.DataFrame) -> bool:
    """Does the sweep compare defenses (a `defense` column with a defense other than none)?"""
    return "defense" in df and (df["defense"].fillna("none") != "none").any()


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (both axes maximised; NaN points are never on the front)."""
    ok = ~(np.isnan(x) | np.isnan(y))
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def table(df: pd.DataFrame, x: str = RETAINED, y: str = TAIL) -> pd.DataFrame:
    ok = df[df["status"] == "ok"].copy() if "status" in df else df.copy()
    if ok.empty:
        return pd.DataFrame(columns=COLUMNS)
    ok["arm"] = [arm(r) for _, r in ok.iterrows()]
    ok["hidden"] = variants.column(ok, ok["arm"])  # EM lower under the plain format only? (analysis/variants.py)
    for c in COLUMNS:
        if c not in ok:
            ok[c] = np.nan
    ok["pareto"] = False
    for _, g in ok.groupby(ok["em_dataset"].astype(str)):
        mask = pareto(g[x].astype(float).to_numpy(), g[y].astype(float).to_numpy())
        ok.loc[g.index, "pareto"] = mask
    return ok[COLUMNS].sort_values(["em_dataset", "arm", "seed"]).reset_index(drop=True)


def _err(t: pd.DataFrame, m: str):
    v = t[m].astype(float)
    lo = t[f"{m}_lo"].astype(float) if f"{m}_lo" in t else v
    hi = t[f"{m}_hi"].astype(float) if f"{m}_hi" in t else v
    return v, [(v - lo).clip(lower=0).fillna(0), (hi - v).clip(lower=0).fillna(0)]


def plot(t: pd.DataFrame, out: Path, y: str = TAIL):
    """Two panels, y = the EM tail: x = general capability retained (lm-eval), x = in-task held-out accuracy. The
    Pareto front (left panel's axes) is drawn as a line through its cells and their markers ringed."""
    import matplotlib  # lazy: slow import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: slow import

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), squeeze=False)
    arms = sorted(t["arm"].unique())
    colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    for ax, x, xlabel in ((axes[0][0], RETAINED, "general capability retained (lm-eval accuracy, after - before EM)"),
                          (axes[0][1], IN_TASK, "in-task: EM held-out next-token accuracy (end of training)")):
        for a in arms:
            g = t[t["arm"] == a]
            if g[x].isna().all() or g[y].isna().all():
                continue
            xv, xerr = _err(g, x) if f"{x}_lo" in g else (g[x].astype(float), None)
            yv, yerr = _err(g, y)
            ax.errorbar(xv, yv, xerr=xerr if xerr is not None and x == RETAINED else None, yerr=yerr, fmt="o",
                        capsize=3, color=colours[a], label=a)
        if x == RETAINED:
            for _, g in t[t["pareto"]].groupby("em_dataset"):
                g = g.sort_values(x)
                ax.plot(g[x].astype(float), g[y].astype(float), "--", color="black", lw=1,
                        label=f"Pareto front ({g['em_dataset'].iloc[0]})")
                ax.scatter(g[x].astype(float), g[y].astype(float), s=160, facecolors="none", edgecolors="black")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"EM tail: {y} (higher = milder)")
        ax.set_title("EM tail against capability (95% CI)")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def section(df: pd.DataFrame, out: Path, md) -> tuple[list[str], list[str]]:
    """(report lines, figure files) of the defenses comparison; nothing when the sweep compares no defense."""
    if not applies(df):
        return [], []
    t = table(df)
    t.to_csv(Path(out) / "defenses.csv", index=False)
    plot(t, Path(out) / "defenses_pareto.png")
    front = ", ".join(f"`{r.arm}` ({r.em_dataset}, s{int(r.seed) if pd.notna(r.seed) else '?'})"
                      for r in t[t["pareto"]].itertuples())
    hidden = sorted({f"`{a}` ({d})" for a, d, h in zip(t["arm"], t["em_dataset"], t["hidden"])
                     if str(h).startswith("hidden")})
    checked = (t["hidden"].astype(str) != "").any()
    lines = ["## Defenses: EM tail against capability retained\n",
             f"One point per cell. y: `{TAIL}` (mean aligned score of the worst 5% of answers, higher = milder tail); "
             f"x: `{RETAINED}` (lm-eval accuracy after minus before EM, paired over documents) and, in the second panel, "
             f"`{IN_TASK}` (the EM dataset's held-out next-token accuracy at the end of training). On the Pareto front "
             f"(per EM dataset, point estimates): {front or 'none'}.\n",
             ("Hidden, not removed (EM lower than the no-persona baseline under the plain question, by the 95% "
              "intervals, but not under a triggered format: `em_rate_mo@json`/`@template`/`@context`; column "
              "`hidden`): "
              + (", ".join(hidden) or "none") + ".\n") if checked else
             "Hidden EM not checked: no triggered format (eval.variants json, template, context) was evaluated "
             "beside the plain questions, or no no-persona baseline shares an EM dataset.\n", md(t)]
    return lines, ["defenses_pareto.png"]
