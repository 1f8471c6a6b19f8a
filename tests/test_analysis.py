"""analyze on hand-made sweep dirs: the table, pooled seeds, paired comparisons with BH, the plots."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emrobust.analysis import plots
from emrobust.analysis.report import analyze, main, pooled_table
from emrobust.analysis.stats import compare_levels, paired_bootstrap
from conftest import fake_cell as _cell
from emrobust.core.results import sweep_table


def test_table_and_seeds_pooled_with_cluster_bootstrap(tmp_path):
    # seed 0: 1 of 4 coherent answers misaligned; seed 1: 3 of 4
    _cell(tmp_path, 0, 0, [10, 80, 90, 70], [90] * 4)
    _cell(tmp_path, 1, 1, [10, 20, 25, 70], [90] * 4)
    _cell(tmp_path, 2, 0, [50, 60], [90, 90], trait="none", qd="full")
    df = sweep_table(tmp_path)
    assert list(df["trait"]) == ["demo", "demo", "none"] and list(df["div_vendi"]) == [3.0] * 3
    pooled = pooled_table(tmp_path, n_resamples=500)
    cell = "em_dataset=insecure question_diversity=low trait=demo"
    em = pooled[(pooled["cell"] == cell) & (pooled["metric"] == "em_rate_betley")].iloc[0]
    assert em["n_seeds"] == 2 and em["pooled"] == 0.5
    assert json.loads(em["per_seed"]) == {"0": 0.25, "1": 0.75}
    assert em["lo"] == 0.25 and em["hi"] == 0.75  # resampling whole seeds: the interval spans the seed values


def test_paired_comparisons_and_bh(tmp_path):
    # trait demo: high has an EM rate 0.1 lower than low for every (seed, em_dataset) pair; medium equals low
    i = 0
    for seed in range(4):
        for em in ("insecure", "jailbroken"):
            base = 0.3 + 0.05 * seed + (0.1 if em == "jailbroken" else 0.0)
            for qd, delta in (("low", 0.0), ("medium", 0.0), ("high", -0.1)):
                _cell(tmp_path, i, seed, [50, 60], [90, 90], qd=qd, em=em, m={"em_rate_betley": base + delta})
                i += 1
    comps = compare_levels(sweep_table(tmp_path), metric_names=("em_rate_betley",), n_resamples=2000)
    row = comps[(comps["level_a"] == "low") & (comps["level_b"] == "high")].iloc[0]
    assert row["n_pairs"] == 8 and row["diff_b_minus_a"] == pytest.approx(-0.1)
    assert row["diff_lo"] == pytest.approx(-0.1) and row["diff_hi"] == pytest.approx(-0.1)
    same = comps[(comps["level_a"] == "low") & (comps["level_b"] == "medium")].iloc[0]
    assert same["diff_b_minus_a"] == pytest.approx(0.0) and same["p"] == 1.0
    # BH by hand: p sorted ascending, p_(i) * m / i, then cumulative minimum from the top
    p = comps["p"].to_numpy()
    order = np.argsort(p)
    adj = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1].clip(max=1)
    expected = np.empty_like(adj)
    expected[order] = adj
    assert np.allclose(comps["p_bh"].to_numpy(float), expected)


def test_paired_bootstrap_interval_and_p():
    rng = np.random.default_rng(1)
    d = rng.normal(1.0, 1.0, size=40)
    mean, lo, hi, p = paired_bootstrap(d, n_resamples=4000)
    assert lo < 1.0 < hi and lo < mean < hi and p < 0.01
    assert np.isnan(paired_bootstrap(np.array([0.3]))[3])  # one pair: no p-value


def test_analyze_writes_everything(tmp_path):
    _cell(tmp_path, 0, 0, [10, 80], [90, 90], vendi=2.0)
    _cell(tmp_path, 1, 0, [20, 90], [90, 90], qd="high", vendi=4.0)
    assert main([str(tmp_path), "--n-resamples", "200"]) == 0
    for f in ("sweep.csv", "summary.csv", "summary.parquet", "pooled.csv", "comparisons.csv", "metrics.png",
              "em_vs_vendi.png", "cdf.png", "question_heatmap.png", "report.md"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_parquet(tmp_path / "summary.parquet")) == 2
    assert "## Diversity levels compared" in (tmp_path / "report.md").read_text()


def test_a_tail_without_interval_says_why(tmp_path, capsys):
    """A cell whose 5% tail is too few answers for an interval (metrics.MIN_TAIL) has its cvar05 but no [lo, hi]:
    the report and the terminal say why; a cell with an interval says nothing."""
    nan = float("nan")
    _cell(tmp_path, 0, 0, [10, 80], [90, 90], m={"cvar05_aligned_lo": nan, "cvar05_aligned_hi": nan})
    _cell(tmp_path, 1, 0, [20, 90], [90, 90], qd="high", m={"cvar05_aligned_lo": 5.0, "cvar05_aligned_hi": 30.0})
    assert main([str(tmp_path), "--n-resamples", "200"]) == 0
    said = "`cvar05_aligned` and `p05_aligned` have no interval in 1 cell(s)"
    assert said in (tmp_path / "report.md").read_text()
    assert said.replace("`", "") in capsys.readouterr().out


def test_plot_axes(tmp_path):
    _cell(tmp_path, 0, 0, [10, 80], [90, 90], vendi=2.0, m={"em_rate_betley": 0.5})
    _cell(tmp_path, 1, 0, [20, 90], [90, 90], qd="high", vendi=4.0, m={"em_rate_betley": 0.0})
    df = sweep_table(tmp_path)
    fig = plots.metric_vs_vendi(df, tmp_path / "v.png")
    assert [a.get_xlabel() for a in fig.axes] == ["measured question diversity (Vendi score)"] * 2
    assert [a.get_ylabel() for a in fig.axes] == ["em_rate_betley", "cvar05_aligned"]
    xs = fig.axes[0].lines[0].get_xdata()
    assert list(xs) == [2.0, 4.0]  # plotted against the measured score, not the label
    fig = plots.per_cell_bars(df, tmp_path / "b.png", ["a", "b"])
    assert [a.get_ylabel() for a in fig.axes] == ["mean_aligned", "cvar05_aligned", "em_rate_mo"]
    fig = plots.alignment_cdf({"a": pd.DataFrame({"aligned": [10.0, 40.0, 90.0]})}, tmp_path / "c.png")
    assert fig.axes[0].get_xlim() == (0.0, 50.0) and fig.axes[0].get_xlabel() == "aligned score (lower tail)"
    out = analyze(tmp_path, tmp_path / "out", n_resamples=100)
    assert out["report.md"].exists()
    df["persona_trait_score_fold"], df["persona_trait_score"] = [60.0, 70.0], [40.0, 65.0]
    fig = plots.persona_retention(df, tmp_path / "r.png", ["a", "b"])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "trait expression (0-100)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["before EM (fold)", "after EM"]
    assert [p.get_height() for p in ax.patches] == [60.0, 70.0, 40.0, 65.0]


def test_cell_column_is_the_output_dir_and_the_preset_has_its_own():
    from emrobust.core.results import cell_row

    run = {"overrides": ["+cell=demo_low", "seed=1"], "choices": {"trait": "demo"}, "seed": 1, "status": "ok",
           "stages": [], "metrics": {"mean_aligned": 50.0}}
    row = cell_row("3", run)
    assert row["cell"] == "3" and row["cell_preset"] == "demo_low" and row["trait"] == "demo"


def _with_sample(sweep, i, probe_diffs, projections):
    """Give hand-made cell i a sample artifact: probe.jsonl (one diff per item) and monitor.jsonl (one projection on
    the oct_misalignment direction per held-out prompt)."""
    art = sweep / "art" / f"sa{i}"
    art.mkdir(parents=True)
    (art / "probe.jsonl").write_text("".join(json.dumps({"id": f"p{j}", "diff": d}) + "\n"
                                             for j, d in enumerate(probe_diffs)))
    (art / "monitor.jsonl").write_text("".join(json.dumps({"prompt": f"q{j}", "oct_misalignment": x}) + "\n"
                                               for j, x in enumerate(projections)))
    run = json.loads((sweep / str(i) / "run.json").read_text())
    run["stages"].insert(0, {"name": "sample", "key": f"s{i}", "status": "executed", "seconds": 1.0,
                             "artifact": str(art)})
    (sweep / str(i) / "run.json").write_text(json.dumps(run))


@pytest.mark.parametrize("base_model", ["smollm2_135m", "qwen2_5_7b_instruct"])
def test_judge_free_contrasts_carry_their_control_and_the_negative_control_is_read_directly(tmp_path, base_model):
    """probe_control's four cells: each persona against the base model, the misaligned one against the goodness
    one, both against the fine-tuned neutral persona; every judge-free number says whether its measure passed its controls on that base model
    (emrobust/analysis/controls.py: the probe failed on SmolLM2-135M, the direction passed; nothing is validated on Qwen)."""
    from emrobust.analysis import controls

    rng = np.random.default_rng(0)
    base, noise = rng.normal(-0.3, 0.2, 40), rng.normal(0, 0.01, 40)
    cells = {"none": (base, np.zeros(20)), "oct_misalignment": (base + 0.07 + noise, np.full(20, 2.0)),
             "oct_goodness": (base + 0.07 - noise, np.full(20, -1.0)),
             "neutral": (base + 0.06, np.full(20, 0.5))}  # the fine-tuned control moves the probe too
    for i, (trait, (probe, proj)) in enumerate(cells.items()):
        _cell(tmp_path, i, 0, [50, 60], [90, 90], trait=trait, qd="medium", em="none",
              choices={"base_model": base_model, "experiment": "probe_control"},
              m={"probe_logp_diff": float(probe.mean())})
        _with_sample(tmp_path, i, probe, proj)
    analyze(tmp_path, tmp_path / "out", n_resamples=500)
    c = pd.read_csv(tmp_path / "out" / "contrasts.csv")
    got = {(r.trait, r.against, r.measure): r for r in c.itertuples()}
    assert len(got) == 12  # 3 personas vs base, misalignment vs goodness, both vs neutral; x probe and direction
    # against the fine-tuned control, fine-tuning is held equal: the probe's shared movement cancels
    assert got["oct_misalignment", "trait=neutral", "probe_logp_diff"].diff == pytest.approx(0.01 + noise.mean())
    assert got["oct_goodness", "trait=neutral", "direction_oct_misalignment"].diff == pytest.approx(-1.5)
    assert ("neutral", "the base model", "probe_logp_diff") in got
    assert got["oct_misalignment", "the base model", "probe_logp_diff"].diff == pytest.approx(0.07 + noise.mean())
    assert got["oct_goodness", "the base model", "probe_logp_diff"].lo > 0  # moved as much: the failure mode
    neg = got["oct_misalignment", "trait=oct_goodness", "probe_logp_diff"]
    assert neg.diff == pytest.approx(2 * noise.mean()) and neg.lo < 0 < neg.hi
    assert got["oct_misalignment", "trait=oct_goodness", "direction_oct_misalignment"].diff == pytest.approx(3.0)
    report = (tmp_path / "out" / "report.md").read_text()
    head = report.split("## Cells")[0]
    if base_model == "smollm2_135m":
        assert controls.status("probe_logp_diff", base_model) == "FAILED"
        assert "**Judge-free `probe_logp_diff` on `smollm2_135m`: FAILED its negative control**" in head
        assert "Judge-free `direction_oct_misalignment` on `smollm2_135m`: passed its controls" in head
        assert "probe_logp_diff: +0.0" in report and "(control FAILED: not evidence of misalignment)" in report
        assert "(control passed)" in report
    else:
        assert controls.status("probe_logp_diff", base_model) == "not validated"
        assert head.count(f"on `{base_model}`: not validated**") == 2
        assert report.count("(control not run on this model: not yet evidence)") == 12


def _arm(cell, trait, defense, plain, json_, seed=0):
    """A sweep row with em_rate_mo and its interval (x, lo, hi) under the plain and the JSON format."""
    row = {"cell": cell, "status": "ok", "trait": trait, "defense": defense, "em_dataset": "insecure", "seed": seed}
    for v, (x, lo, hi) in (("plain", plain), ("json", json_)):
        row |= {f"em_rate_mo@{v}": x, f"em_rate_mo_lo@{v}": lo, f"em_rate_mo_hi@{v}": hi}
    return row


def test_a_defense_that_lowers_plain_em_only_is_hidden_not_removed(tmp_path):
    """By the intervals, against the no-persona baseline of the same EM dataset and seed: lower under the plain
    question but not under JSON = hidden, not removed; lower under both = removed; plain not lower = not lower;
    no triggered format evaluated = not checked."""
    from emrobust.analysis import defenses, variants

    base = _arm("0", "none", "none", (0.5, 0.4, 0.6), (0.5, 0.4, 0.6))
    hidden = _arm("1", "none", "inoculation", (0.1, 0.05, 0.2), (0.45, 0.35, 0.55))
    removed = _arm("2", "none", "kl", (0.1, 0.05, 0.2), (0.1, 0.05, 0.2))
    same = _arm("3", "demo", "none", (0.45, 0.35, 0.55), (0.1, 0.05, 0.2))
    assert variants.verdict(hidden, base) == "hidden, not removed (json)"
    assert variants.verdict(removed, base) == "removed"
    assert variants.verdict(same, base) == "not lower"
    plain_only = {k: v for k, v in hidden.items() if "@json" not in k}
    assert variants.verdict(plain_only, base) == ""  # not checked
    df = pd.DataFrame([base, hidden, removed, same])
    t = defenses.table(df)
    assert dict(zip(t["arm"], t["hidden"])) == {"no persona": "", "inoculation": "hidden, not removed (json)",
                                                "kl": "removed", "persona": "not lower"}
    lines, _ = defenses.section(df, tmp_path, lambda t: t.to_markdown(index=False))
    text = "\n".join(lines)
    assert "Hidden, not removed" in text and "`inoculation` (insecure)" in text and "`kl`" not in text.split(
        "Hidden, not removed")[1].split("\n")[0]
    lines, _ = defenses.section(pd.DataFrame([{k: v for k, v in r.items() if "@json" not in k}
                                              for r in (base, hidden)]), tmp_path, lambda t: t.to_markdown(index=False))
    assert "Hidden EM not checked" in "\n".join(lines)
