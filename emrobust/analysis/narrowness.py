"""Narrow against broad misalignment: the in-domain answers (eval.in_domain: the EM dataset's own domain, judged
with its own rubric; emrobust/data/domains.py) beside the out-of-domain eval set, per cell.

Every other EM figure of the report is out-of-domain (broad), the project's question. `narrowness` is the
out-of-domain MO rate over the in-domain one (emrobust.measures.metrics.narrowness): well below 1, the fine-tune learned its
narrow task and stayed narrow; near 1 or above, the misalignment is as broad outside the domain as inside. NaN has
its reason (`narrowness_why`: no in-domain EM).
"""
from __future__ import annotations

import pandas as pd

COLUMNS = ["cell", "trait", "question_diversity", "defense", "em_dataset", "seed", "em_rate_mo", "em_rate_mo_lo",
           "em_rate_mo_hi", "em_rate_mo_in_domain", "em_rate_mo_in_domain_lo", "em_rate_mo_in_domain_hi",
           "em_rate_mo_in_domain_start", "narrowness", "narrowness_lo", "narrowness_hi", "narrowness_why",
           "judge_trusted_in_domain"]


def applies(df: pd.DataFrame) -> bool:
    return "em_rate_mo_in_domain" in df and pd.to_numeric(df["em_rate_mo_in_domain"], errors="coerce").notna().any()


def section(df: pd.DataFrame, md) -> list[str]:
    """The report's section (nothing when no cell answered in-domain questions)."""
    if not applies(df):
        return []
    t = df[df["em_rate_mo_in_domain"].notna()]
    untrusted = ("judge_trusted_in_domain" in t and not t["judge_trusted_in_domain"].fillna(False).astype(bool).all())
    return ["## Narrow against broad: in-domain and out-of-domain EM\n",
            "`em_rate_mo` is out-of-domain (the eval set: broad misalignment, what every other section tests); "
            "`em_rate_mo_in_domain` is the same model on its EM dataset's own domain, judged with that domain's "
            "rubric (`_start`: before EM). `narrowness` = out-of-domain over in-domain rate, with a 95% interval: "
            "well below 1, the fine-tune stayed narrow; near 1 or above, it is as broad as it is narrow.\n",
            *(["**The in-domain judge is not trusted** for some cells (`judge_trusted_in_domain`: calibrate it with "
               "`emrobust judge calibrate judge=<name> reference=domain_<domain>`); the in-domain rates are not "
               "evidence until it is.\n"] if untrusted else []),
            md(t[[c for c in COLUMNS if c in t]])]
