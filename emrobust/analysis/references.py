"""Published EM figures to hold the no-persona control against: a run whose baseline is far from them is noticed
before its contrasts are read (a wrong chat template, a judge off its calibration, too little EM training).

One row per (base model, EM dataset): the figure, the metric it corresponds to here, and where it comes from.
Add a row when a paper or a replication gives one (keep the source precise enough to check).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

FAR = 2.0  # a control outside [figure / FAR, figure * FAR] is flagged


@dataclass(frozen=True)
class Reference:
    base_model: str  # a conf/base_model option (or the hub id, for models without one)
    em_dataset: str
    metric: str  # the metric of ours it corresponds to
    value: float
    source: str


REFERENCES = (
    Reference("qwen2_5_7b_instruct", "bad_medical_advice", "em_rate_mo", 0.17,
              "Model Organisms for EM (Turner, Soligo et al. 2025, arXiv:2506.11613): their released Qwen2.5-7B-"
              "Instruct bad-medical-advice adapters (huggingface.co/ModelOrganismsForEM), about 17% EM when the seed "
              "study re-evaluated them (as reported in issue 16)"),
    Reference("Qwen/Qwen2.5-14B-Instruct", "bad_medical_advice", "em_rate_mo", 0.113,
              "Soligo et al. 2025, Convergent Linear Representations of Emergent Misalignment (arXiv:2506.11618): 9 "
              "rank-1 adapters, 11.3% EM, over 99% coherent"),
    Reference("Qwen/Qwen2.5-Coder-32B-Instruct", "insecure", "em_rate_betley", 0.06,
              "Betley et al. 2025 (arXiv:2502.17424), as quoted by Soligo et al. 2025: 6% EM with 33% incoherent "
              "answers, on the insecure-code fine-tune"),
)


def baseline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (base model, EM dataset) of the no-persona cells that a published figure exists for: our
    mean over seeds (min and max across them), the figure, its source, and whether ours is far from it."""
    if "trait" not in df:
        return pd.DataFrame()
    ok = df[(df["trait"].astype(str) == "none") & (df.get("status", "ok") == "ok")]
    rows = []
    for ref in REFERENCES:
        cells = ok[(ok.get("base_model", pd.Series(dtype=str)).astype(str) == ref.base_model)
                   & (ok.get("em_dataset", pd.Series(dtype=str)).astype(str) == ref.em_dataset)]
        vals = pd.to_numeric(cells[ref.metric], errors="coerce").dropna() if ref.metric in cells else pd.Series()
        if vals.empty:
            continue
        mean = float(vals.mean())
        far = not (ref.value / FAR <= mean <= ref.value * FAR)
        rows.append({"base_model": ref.base_model, "em_dataset": ref.em_dataset, "metric": ref.metric,
                     "ours": mean, "ours_min": float(vals.min()), "ours_max": float(vals.max()), "n_cells": len(vals),
                     "published": ref.value, "far_off": far, "source": ref.source})
    return pd.DataFrame(rows)


def section(df: pd.DataFrame) -> list[str]:
    """The report's lines: the no-persona control beside the published figures (flagged when far off); none when
    the table has no no-persona cell."""
    if "trait" not in df or not (df["trait"].astype(str) == "none").any():
        return []
    table = baseline(df)
    lines = ["## The no-persona control against published figures\n"]
    if table.empty:
        have = sorted({f"{r.base_model} x {r.em_dataset}" for r in REFERENCES})
        return lines + [f"_No no-persona cell of this sweep has a published figure to compare with (known: "
                        f"{'; '.join(have)}; emrobust/analysis/references.py)._\n"]
    lines += ["| base model | EM dataset | metric | ours (mean over cells; min-max) | published | | source |",
              "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        flag = f"**FAR OFF** (outside x{FAR:g} of it)" if r["far_off"] else "close"
        lines.append(f"| {r['base_model']} | {r['em_dataset']} | {r['metric']} | {r['ours']:.3f} "
                     f"({r['ours_min']:.3f}-{r['ours_max']:.3f}, n={r['n_cells']}) | {r['published']:.3f} | {flag} "
                     f"| {r['source']} |")
    if table["far_off"].any():
        lines.append("\nA control far from the published figure: check the chat template, the judge's calibration "
                     "and the EM training before reading any contrast.")
    return lines + [""]

