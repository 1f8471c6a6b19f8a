"""The manipulation check: did the arms of a contrast learn the persona equally, before EM?

A hypothesis compares arms that differ in how the persona was trained (question diversity, introspection, dose) and
reads their EM difference as the effect of that difference. If one arm learned the persona more strongly, an EM
difference may be strength, not the manipulation. So each hypothesis section shows, for every contrast whose two
arms train the same persona, the persona's strength at EM step 0 in each arm, by three instruments:

- `persona_rate_fold`: the persona classifier on the starting model's answers to the reserved persona questions
  (judge-free; an interval over answers). It flags only when the classifier is valid for the cell.
- `persona_projection_fold`: the mean projection of those prompts on the persona's own direction, compared in
  units of the persona's width (the spread of that projection across the prompts), so a difference reads as an
  effect size. It carries its direction's control (`emrobust.measures.controls`).
- `persona_trait_score_fold`: the judge's trait score (0-100). Shown, never flagged: nothing calibrates the judge's
  persona template.

A contrast is flagged when a flagging instrument's arms differ by more than its declared tolerance (`MEASURES`).
Contrasts against no persona, or between two different personas, are not checked: their arms differ in persona by
design. With one pair per contrast (one seed) the difference has no interval over pairs: the arms' own intervals
(over answers, over prompts) are shown instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..measures.controls import tag
from .hypotheses import Hypothesis, _col, pairs, select
from .stats import paired_bootstrap


@dataclass(frozen=True)
class Strength:
    column: str  # the sweep table's step-0 column
    tolerance: float | None  # |b - a| (in `unit`) beyond which the arms learned the persona unequally; None: never
    unit: str
    valid: str | None = None  # the column that must be true in both arms for the measure to flag
    scale: str | None = None  # a column the difference is divided by (the mean over both arms)
    why_not: str = ""  # why it never flags


MEASURES = (
    Strength("persona_rate_fold", 0.10, "share of answers", valid="persona_classifier_valid"),
    Strength("persona_projection_fold", 0.5, "persona widths", scale="persona_width_fold"),
    Strength("persona_trait_score_fold", None, "judge points (0-100)",
             why_not="the judge's persona template is not calibrated"),
)
COLUMNS = ["hypothesis", "contrast", "measure", "unit", "n_pairs", "a", "a_lo", "a_hi", "b", "b_lo", "b_hi",
           "effect", "lo", "hi", "tolerance", "flags", "flag", "why"]
WIDTH_VS = ("cvar05_aligned", "em_rate_mo")  # the EM tail and rate the width is read against


def _same_persona(ok: pd.DataFrame, c) -> str | None:
    """The persona both arms of a contrast train, or None (no persona, or two different ones)."""
    traits = set(_col(select(ok, c.a), "trait")) | set(_col(select(ok, c.b), "trait"))
    return traits.pop() if len(traits) == 1 and not traits & {"none", "nan"} else None


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(float)


def _all_true(s: pd.Series) -> bool:
    return bool(len(s)) and all(v is True or str(v).lower() == "true" for v in s)


def table(h: Hypothesis, df: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    """One row per (same-persona contrast of `h`, strength measure present in the table)."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    rows = []
    for c in h.arms(ok):
        if _same_persona(ok, c) is None:
            continue
        a, b = pairs(ok, c)
        for m in MEASURES:
            if m.column not in ok or not len(a) or np.isnan(_num(pd.concat([a[m.column], b[m.column]]))).all():
                continue
            va, vb = _num(a[m.column]), _num(b[m.column])
            diffs = vb - va
            if m.scale:
                scale = np.nanmean(np.concatenate([_num(a[m.scale]), _num(b[m.scale])])) if m.scale in ok else np.nan
                diffs = diffs / scale if scale and np.isfinite(scale) and scale > 0 else diffs * np.nan
            effect, lo, hi, _ = paired_bootstrap(diffs, n_resamples)
            iv = lambda x, s: float(np.nanmean(_num(x[m.column + s]))) if m.column + s in x else np.nan  # noqa: E731
            blocked = m.why_not  # why this measure does not flag here
            if m.valid and not (_all_true(a.get(m.valid, pd.Series(dtype=object)))
                                and _all_true(b.get(m.valid, pd.Series(dtype=object)))):
                blocked = f"{m.valid} is not true in both arms"
            if m.scale and not np.isfinite(effect):
                blocked = f"no {m.scale} to scale by"
            flags = m.tolerance is not None and not blocked
            note = (tag(f"direction_{_col(a, 'trait').iloc[0]}", str(_col(a, "base_model").iloc[0]))
                    if m.column == "persona_projection_fold" else "")  # the persona direction's control
            why = "; ".join(w for w in (blocked, note) if w)
            rows.append({"hypothesis": h.name, "contrast": c.label, "measure": m.column, "unit": m.unit,
                         "n_pairs": int(np.isfinite(diffs).sum()), "a": float(np.nanmean(va)), "a_lo": iv(a, "_lo"),
                         "a_hi": iv(a, "_hi"), "b": float(np.nanmean(vb)), "b_lo": iv(b, "_lo"), "b_hi": iv(b, "_hi"),
                         "effect": effect, "lo": lo, "hi": hi, "tolerance": m.tolerance, "flags": flags,
                         "flag": bool(flags and np.isfinite(effect) and abs(effect) > m.tolerance), "why": why})
    return pd.DataFrame(rows, columns=COLUMNS)


def _f(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"


def section(t: pd.DataFrame) -> list[str]:
    """The manipulation check's lines inside a hypothesis section."""
    lines = ["### Manipulation check: persona strength before EM, per arm\n",
             "Same-persona contrasts only. `a`/`b`: the arms at EM step 0 with their own intervals; effect: b - a "
             "(projection in persona widths). A row flags when a flagging measure differs by more than its tolerance "
             "(emrobust/analysis/manipulation.py).\n"]
    if t.empty:
        return lines + ["_No same-persona contrast with a step-0 persona measure among the ok cells (the persona "
                        "measures need a persona classifier, the monitor, or a judged persona score)._\n"]
    lines += ["| contrast (b vs a) | measure | a [interval] | b [interval] | effect (b - a) | tolerance | reading |",
              "|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        ci = f" [{_f(r['lo'])}, {_f(r['hi'])}]" if np.isfinite(r["lo"]) else ""
        reading = ("**UNEQUAL**" if r["flag"] else "within tolerance" if r["flags"] and np.isfinite(r["effect"])
                   else f"not used for the flag: {r['why']}" if not r["flags"] else "no difference measured")
        if r["flags"] and r["why"]:
            reading += f" ({r['why']})"
        lines.append(f"| {r['contrast']} | {r['measure']} | {_f(r['a'])} [{_f(r['a_lo'])}, {_f(r['a_hi'])}] | "
                     f"{_f(r['b'])} [{_f(r['b_lo'])}, {_f(r['b_hi'])}] | {_f(r['effect'])}{ci} | "
                     f"{_f(r['tolerance']) or 'none'} | {reading} |")
    return lines + [""]


def headline(t: pd.DataFrame) -> list[str]:
    """The report's first line on the manipulation, as the balance flag's: flagged contrasts first, in bold."""
    if t.empty:
        return []
    flagged = t[t["flag"]]
    usable = t[t["flags"] & t["effect"].map(lambda v: bool(np.isfinite(v)))]
    if len(flagged):
        w = flagged.assign(_r=flagged["effect"].abs() / flagged["tolerance"]).sort_values("_r").iloc[-1]
        return [f"**Manipulation: the arms learned the persona unequally in {flagged['contrast'].nunique()} "
                f"contrast(s)** (worst: {w['hypothesis']} {w['contrast']}, {w['measure']} {_f(w['a'])} vs "
                f"{_f(w['b'])}, tolerance {_f(w['tolerance'])} {w['unit']}): an EM difference there may be persona "
                "strength, not the manipulation; see each hypothesis's *Manipulation check*.\n"]
    if len(usable):
        # the measure's own standing (its control not run or failed on this model) goes with the OK, as in the table
        caveats = sorted({w for w in usable["why"] if w})
        return [f"Manipulation check: OK, the arms of {usable['contrast'].nunique()} same-persona contrast(s) learned "
                f"the persona within tolerance ({', '.join(sorted(set(usable['measure'])))})"
                + (f"; but {'; '.join(caveats)}" if caveats else "") + ".\n"]
    whys = sorted({w for w in t.loc[t["tolerance"].notna(), "why"] if w})
    return [f"**Manipulation check: not possible here**: no flagging measure is usable ({'; '.join(whys)}); the "
            "arms' persona strength is shown per hypothesis, unchecked.\n"]


def width_section(df: pd.DataFrame, n_resamples: int = 10_000, seed: int = 0) -> list[str]:
    """Persona width before EM against the EM tail across persona cells: the idea that a narrow persona is harder
    to overwrite. Spearman's rho over cells with a bootstrap interval over cells."""
    from scipy.stats import spearmanr  # lazy: slow import

    ok = df[(df["status"] == "ok") & (_col(df, "trait") != "none")] if "status" in df else df
    if "persona_width_fold" not in ok or ok["persona_width_fold"].isna().all():
        return []
    lines = ["## Persona width before EM against the EM tail\n",
             "persona_width: the spread, across the reserved persona prompts, of the starting model's projection on "
             "the persona's own direction (a narrow, delta-like persona has a small width). If narrow personas are "
             "harder to overwrite, width rises with the EM tail: rho > 0 against em_rate_mo, < 0 against "
             "cvar05_aligned. Spearman's rho over persona cells, 95% bootstrap interval over cells.\n"]
    controls = sorted({f"`direction_{t}` on `{bm}`: {tag(f'direction_{t}', str(bm))}"
                       for t, bm in zip(_col(ok, "trait"), _col(ok, "base_model"))})
    lines.append("The width's direction: " + "; ".join(controls) + ".\n")
    rng = np.random.default_rng(seed)
    for m in WIDTH_VS:
        if m not in ok:
            continue
        x, y = _num(ok["persona_width_fold"]), _num(ok[m])
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            lines.append(f"- width vs {m}: {len(x)} cell(s) with both, {'no spread' if len(x) >= 3 else 'too few'}: "
                         "no correlation measured.\n")
            continue
        rho = float(spearmanr(x, y).statistic)
        boots = []
        for _ in range(min(n_resamples, 2000)):
            i = rng.integers(0, len(x), len(x))
            if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
                boots.append(spearmanr(x[i], y[i]).statistic)
        lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
        lines.append(f"- width vs {m}: rho {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] over {len(x)} cells.\n")
    return lines


def through_em_lines(df: pd.DataFrame, label) -> list[str]:
    """The persona's classifier rate before and after EM for each persona cell, with the classifier's validity and
    `persona_half_life`: how much of the persona EM removed, judge-free. `label(row)` names a cell."""
    if "persona_rate" not in df or "persona_rate_fold" not in df:
        return []
    ok = df[(df["status"] == "ok") & df["persona_rate"].notna()] if "status" in df else df[df["persona_rate"].notna()]
    if ok.empty:
        return []
    lines = ["## The persona through EM, judge-free\n",
             "persona_rate: the share of a model's answers to the trait's reserved questions (no system prompt) that "
             "its persona classifier says show the persona, Wilson 95% interval; before EM (the starting model) and "
             "after (the evaluated model), and the base model's own rate (what is left when the persona is gone). "
             "An invalid classifier's rates are printed but are not evidence.\n"]
    for _, r in ok.iterrows():
        iv = lambda k: (f"{r[k]:.2f} [{r.get(k + '_lo', np.nan):.2f}, {r.get(k + '_hi', np.nan):.2f}]"  # noqa: E731
                        if pd.notna(r.get(k)) else "not measured")
        valid = str(r.get("persona_classifier_valid")).lower() == "true"
        base = r.get("persona_classifier_base_rate")
        hl = r.get("persona_half_life")
        half = (f"persona_half_life {hl:g} steps" if pd.notna(hl) else
                f"persona_half_life > {r.get('persona_half_life_censored_at')} (never halved)"
                if str(r.get("persona_half_life_censored")).lower() == "true" else
                f"no persona_half_life ({r.get('persona_half_life_why', 'not computed')})")
        lines.append(f"- `{label(r)}`: {iv('persona_rate_fold')} before EM -> {iv('persona_rate')} after; base model "
                     f"{base:.2f}; {half}; classifier "
                     + ("valid" if valid else "**NOT valid** (AUROC lower bound below the bar): not evidence") + ".\n"
                     if pd.notna(base) else
                     f"- `{label(r)}`: {iv('persona_rate_fold')} before EM -> {iv('persona_rate')} after; {half}.\n")
    return lines
