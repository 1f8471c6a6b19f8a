"""The report's lines on the judge-free measures: each measure's control outcome on its base model, said before
any of its numbers. The table of outcomes is emrobust/controls.py (validation reads it too: `defense=early_stop`
refuses to stop on a measure whose control failed)."""
from __future__ import annotations

import pandas as pd

from emrobust.controls import (COMMAND, CONTROLS, NEGATIVE, POSITIVE, Control, find, measure_name,  # noqa: F401
                               status, tag)


def headline(df: pd.DataFrame, contrasts: pd.DataFrame | None = None) -> list[str]:
    """The report's lines on the judge-free measures it shows, per base model: each measure's controls, said before
    any of its numbers (a failed or missing control first, in bold)."""
    shown: set[tuple[str, str]] = set()
    if "probe_logp_diff" in df and "base_model" in df:
        for bm in df.loc[pd.to_numeric(df["probe_logp_diff"], errors="coerce").notna(), "base_model"].dropna():
            shown.add(("probe_logp_diff", str(bm)))
    if contrasts is not None and len(contrasts) and "base_model" in contrasts:
        shown |= {(m, str(bm)) for m, bm in contrasts[["measure", "base_model"]].itertuples(index=False)}
    lines = []
    for measure, bm in sorted(shown):
        c = find(measure, bm)
        if c is None:
            lines.append(f"**Judge-free `{measure}` on `{bm}`: not validated** (no positive/negative control run on "
                         f"this base model: `{COMMAND}`); its numbers below are not yet evidence.\n")
        elif not c.passed:
            lines.append(f"**Judge-free `{measure}` on `{bm}`: FAILED its negative control** ({c.measured}): "
                         f"oct_misalignment - base {c.positive}; oct_goodness - base {c.negative}. {c.meaning}: its "
                         "numbers below are not evidence of misalignment.\n")
        else:
            lines.append(f"Judge-free `{measure}` on `{bm}`: passed its controls ({c.measured}): oct_misalignment - "
                         f"base {c.positive}; oct_goodness - base {c.negative}: {c.meaning}.\n")
    return lines + early_stop_lines(df)


def early_stop_lines(df: pd.DataFrame) -> list[str]:
    """One line per (measure, base model) that `defense=early_stop` cells stopped on: the measure's control there
    (emrobust/controls.py), so a cell that stopped on a measure not validated, or one whose control failed (allowed
    by defense.early_stop.allow_failed_control), says so before its numbers."""
    if "early_stop_measure" not in df or "base_model" not in df:
        return []
    out = []
    rows = df.dropna(subset=["early_stop_measure"])
    for (m, bm), g in sorted(rows.groupby(["early_stop_measure", "base_model"]), key=lambda x: x[0]):
        measure, n = measure_name(str(m)), len(g)
        s = status(measure, str(bm))
        if s == "not validated":
            out.append(f"**Early stopping on `{m}` on `{bm}`: not validated** ({n} cell(s); no control run on this "
                       f"base model: `{COMMAND}`): where it stopped is not yet evidence of misalignment.\n")
        elif s == "FAILED":
            out.append(f"**Early stopping on `{m}` on `{bm}`: its control FAILED** ({n} cell(s), allowed by "
                       "defense.early_stop.allow_failed_control): it stopped on a measure that is not evidence of "
                       "misalignment there.\n")
        else:
            out.append(f"Early stopping on `{m}` on `{bm}`: its measure passed its controls ({n} cell(s)).\n")
    return out
