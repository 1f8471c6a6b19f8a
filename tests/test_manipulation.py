"""The manipulation check (emrobust/analysis/manipulation.py): each hypothesis section shows the persona's strength before EM
per arm, and the report's first lines flag arms that learned the persona unequally; the width section reads
persona_width before EM against the EM tail."""
from __future__ import annotations

import pandas as pd
import pytest

from emrobust.analysis import hypotheses, manipulation
from conftest import fake_cell


def _cell(i, qd, rate, valid=True, proj=1.0, width=0.5, score=60.0, trait="demo", seed=0, tail=40.0):
    return {"cell": str(i), "status": "ok", "trait": trait, "question_diversity": qd, "seed": seed,
            "em_dataset": "insecure", "eval": "betley", "base_model": "smollm2_135m", "experiment": "diversity_sweep",
            "persona_rate_fold": rate, "persona_rate_fold_lo": rate - 0.05, "persona_rate_fold_hi": rate + 0.05,
            "persona_classifier_valid": valid, "persona_projection_fold": proj, "persona_width_fold": width,
            "persona_trait_score_fold": score, "cvar05_aligned": tail, "em_rate_mo": 0.1}


def test_equal_arms_pass_and_unequal_arms_are_flagged():
    h = hypotheses.HYPOTHESES["diversity_sweep"]
    equal = pd.DataFrame([_cell(0, "low", 0.60), _cell(1, "high", 0.65), _cell(2, "full", 0.10, trait="none")])
    t = manipulation.table(h, equal, n_resamples=200)
    # only the same-persona contrast is checked (against no persona the arms differ by design)
    assert set(t["contrast"]) == {"high vs low diversity"}
    rate = t[t["measure"] == "persona_rate_fold"].iloc[0]
    assert rate["effect"] == rate["b"] - rate["a"] and not rate["flag"] and rate["flags"]
    assert rate["a_lo"] == pytest.approx(0.55) and rate["b_hi"] == pytest.approx(0.70)
    judged = t[t["measure"] == "persona_trait_score_fold"].iloc[0]
    assert not judged["flags"] and "not calibrated" in judged["why"]  # shown, never flagged
    assert manipulation.headline(t)[0].startswith("Manipulation check: OK, the arms of 1 same-persona contrast")

    unequal = pd.DataFrame([_cell(0, "low", 0.30), _cell(1, "high", 0.65)])
    t = manipulation.table(h, unequal, n_resamples=200)
    assert t.loc[t["measure"] == "persona_rate_fold", "flag"].item()
    line = manipulation.headline(t)[0]
    assert line.startswith("**Manipulation: the arms learned the persona unequally in 1 contrast(s)**")
    assert "persona_rate_fold 0.3 vs 0.65" in line and "may be persona strength, not the manipulation" in line
    assert "**UNEQUAL**" in "\n".join(manipulation.section(t))

    # the projection in persona widths: 1.0 vs 1.5 at width 0.5 is one width apart, beyond 0.5
    proj = pd.DataFrame([_cell(0, "low", 0.6, proj=1.0), _cell(1, "high", 0.6, proj=1.5)])
    row = manipulation.table(h, proj, 200).set_index("measure").loc["persona_projection_fold"]
    assert row["effect"] == 1.0 and row["flag"] and "control not run on this model" in row["why"]
    # within tolerance on the projection alone (an invalid classifier): the OK carries the projection's standing
    near = pd.DataFrame([_cell(0, "low", 0.6, valid=False, proj=1.0), _cell(1, "high", 0.6, valid=False, proj=1.1)])
    line = manipulation.headline(manipulation.table(h, near, 200))[0]
    assert line.startswith("Manipulation check: OK") and "(persona_projection_fold); but " in line
    assert "control not run on this model: not yet evidence" in line


def test_an_invalid_classifier_never_flags_and_the_report_says_so():
    h = hypotheses.HYPOTHESES["diversity_sweep"]
    df = pd.DataFrame([_cell(0, "low", 0.1, valid=False, width=float("nan")),
                       _cell(1, "high", 0.9, valid=False, width=float("nan"))])
    t = manipulation.table(h, df, 200)
    assert not t["flag"].any()
    assert "persona_classifier_valid is not true in both arms" in t.set_index("measure").loc["persona_rate_fold", "why"]
    line = manipulation.headline(t)[0]
    assert line.startswith("**Manipulation check: not possible here**") and "persona_width_fold" in line


def test_the_report_carries_the_check_and_the_width_section(tmp_path):
    from emrobust.analysis.report import analyze

    sweep = tmp_path / "sweep"
    for i, (qd, rate, width, tail) in enumerate([("low", 0.2, 0.3, 60), ("medium", 0.5, 0.5, 50),
                                                 ("high", 0.8, 0.9, 20), ("full", 0.05, None, 10)]):
        trait = "none" if qd == "full" else "demo"
        m = {"em_rate_betley": 0.1, "em_rate_mo": 0.1, "cvar05_aligned": tail}
        if trait == "demo":
            m |= {"persona_rate_fold": rate, "persona_rate_fold_lo": rate - 0.1, "persona_rate_fold_hi": rate + 0.1,
                  "persona_classifier_valid": True, "persona_width_fold": width}
        fake_cell(sweep, i, 0, [tail, 90], [90, 90], trait=trait, qd=qd,
                  choices={"experiment": "diversity_sweep_cpu", "base_model": "smollm2_135m"}, m=m)
    files = analyze(sweep, n_resamples=100)
    report = (sweep / "report.md").read_text()
    assert report.index("**Manipulation: the arms learned the persona unequally in 3 contrast(s)**") < \
        report.index("## Cells")
    assert "### Manipulation check: persona strength before EM, per arm" in report
    assert set(pd.read_csv(files["manipulation.csv"])["contrast"]) == {
        "medium vs low diversity", "high vs low diversity", "high vs medium diversity"}
    assert "## Persona width before EM against the EM tail" in report
    assert "- width vs cvar05_aligned: rho -1.00" in report  # the wider the persona, the worse the tail here
    assert "`direction_demo` on `smollm2_135m`: control not run on this model" in report


def test_the_persona_through_em_reads_each_persona_cell_with_its_classifier():
    base = {"status": "ok", "persona_classifier_base_rate": 0.1, "persona_rate_fold_lo": 0.5, "persona_rate_fold_hi": 0.9,
            "persona_rate_lo": 0.2, "persona_rate_hi": 0.6}
    df = pd.DataFrame([
        {**base, "cell": "0", "persona_rate_fold": 0.7, "persona_rate": 0.4, "persona_classifier_valid": True,
         "persona_half_life": 4.5},
        {**base, "cell": "1", "persona_rate_fold": 0.7, "persona_rate": 0.6, "persona_classifier_valid": False,
         "persona_half_life": None, "persona_half_life_why": "persona classifier not valid"},
        {**base, "cell": "2", "persona_rate_fold": None, "persona_rate": None}])  # no persona: not listed
    lines = manipulation.through_em_lines(df, lambda r: f"cell {r['cell']}")
    assert lines[0] == "## The persona through EM, judge-free\n" and len(lines) == 4
    assert lines[2] == ("- `cell 0`: 0.70 [0.50, 0.90] before EM -> 0.40 [0.20, 0.60] after; base model 0.10; "
                        "persona_half_life 4.5 steps; classifier valid.\n")
    assert "no persona_half_life (persona classifier not valid)" in lines[3] and "**NOT valid**" in lines[3]
