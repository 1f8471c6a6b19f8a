"""`emrobust analyze <sweep dir> [...]`: one tidy table from the cells' run.json (and answers) files, plots, seeds
pooled with a cluster bootstrap, paired comparisons between diversity levels, and a markdown report.

Writes into each sweep dir (or `--out`): sweep.csv, summary.csv, summary.parquet, pooled.csv, comparisons.csv,
balance.csv, metrics.png, em_vs_vendi.png, cdf.png, question_heatmap.png, report.md; for a sweep of defenses also
defenses.csv and defenses_pareto.png (emrobust/analysis/defenses.py: the EM tail against capability retained). The report's
first lines say whether the cells of each contrast trained on equal data (emrobust/analysis/balance.py,
`--balance-tolerance`) and learned the persona equally before EM (emrobust/analysis/manipulation.py: manipulation.csv).

`--wandb ENTITY/PROJECT --group G` (the W&B API) or `--wandb-dir DIR` (offline run-*.wandb files) build the same
table from the stages' W&B runs instead (emrobust/analysis/wandb_source.py); the answer-level parts need local answers.

`--import FORMAT PATH...` (betley, moem, arena, csv, jsonl) reads scored answers published by other projects
(emrobust/analysis/imports.py), one cell per `--group-by` group, metrics under `--threshold-rule`, and writes the same files
plus answers.csv (the imported answers, standardised) and none_reasons.csv.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from emrobust.errors import ConfigError

from ..core import tracking
from ..core.results import sweep_table, write_sweep_csv
from ..measures import metrics
from . import balance, controls, defenses, hypotheses, imports, manipulation, narrowness, plots, references, workspace
from .stats import compare_levels

AXES = ["trait", "question_diversity", "introspection", "em_dataset", "defense", "eval", "judge_preset", "base_model",
        "seed"]
SHOW = ["em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
        "none_rate", "n_answers"]
POOLED = {  # (answers, threshold rule) -> value
    "em_rate_betley": lambda d, rule: metrics.em_rate_betley(d["aligned"], d["coherent"], rule),
    "em_rate_mo": lambda d, rule: metrics.em_rate_mo(d["aligned"], d["coherent"], rule),
    "mean_aligned": lambda d, rule: metrics.mean_aligned(d["aligned"]),
    "cvar05_aligned": lambda d, rule: metrics.cvar_aligned(d["aligned"], 0.05),
}


def label(row: pd.Series) -> str:
    parts = [str(row["trait"])] if "trait" in row else [str(row["cell"])]
    if row.get("trait") not in (None, "none") and "question_diversity" in row:
        parts.append(str(row["question_diversity"]))
    if row.get("defense") not in (None, "none") and pd.notna(row.get("defense")):
        parts.append(str(row["defense"]))
    if "seed" in row and pd.notna(row["seed"]):
        parts.append(f"s{int(row['seed'])}")
    return "/".join(parts)


def load_answers(sweep_dir: Path) -> dict[str, tuple[dict, pd.DataFrame]]:
    """cell dir name -> (run.json, scored answers) for every ok cell whose evaluate artifact exists."""
    out = {}
    for rj in sorted(Path(sweep_dir).glob("*/run.json")):
        run = json.loads(rj.read_text())
        ev = next((s for s in run["stages"] if s["name"] == "evaluate" and s["artifact"]), None)
        path = Path(ev["artifact"]) / "answers.jsonl" if ev else None
        if run["status"] == "ok" and path is not None and path.exists():
            a = pd.read_json(path, lines=True)
            for c in ("aligned", "coherent"):
                a[c] = pd.to_numeric(a.get(c), errors="coerce")
            out[rj.parent.name] = (run, a)
    return out


def pooled_table(sweep_dir: Path, n_resamples: int = 10_000, answers=None, rule: str = "paper") -> pd.DataFrame:
    """Cells that differ only in `seed`, pooled: per-seed values, the pooled estimate over all their answers,
    and a cluster-bootstrap interval that resamples whole seeds (training runs), not answers."""
    groups: dict[tuple, list[pd.DataFrame]] = {}
    for run, ans in (answers or load_answers(sweep_dir)).values():
        key = tuple(sorted(o for o in run["overrides"] if o.split("=", 1)[0].lstrip("+~") != "seed"))
        groups.setdefault(key, []).append(ans[["question_id", "aligned", "coherent"]].assign(seed=run["seed"]))
    rows = []
    for key, frames in groups.items():
        df = pd.concat(frames, ignore_index=True)
        for name, fn in POOLED.items():
            r = metrics.pooled_over_seeds(df, lambda d, fn=fn: fn(d, rule), n_resamples=n_resamples, seed=0)
            rows.append({"cell": " ".join(key), "metric": name, "n_seeds": len(r["per_seed"]), "pooled": r["pooled"],
                         "lo": r["lo"], "hi": r["hi"], "per_seed": json.dumps(r["per_seed"], default=float)})
    return pd.DataFrame(rows, columns=["cell", "metric", "n_seeds", "pooled", "lo", "hi", "per_seed"])


def question_rates(answers, rule: str = "paper") -> pd.DataFrame:
    rows = {}
    for cell, (run, a) in answers.items():
        rows[label(pd.Series({**run.get("choices", {}), "seed": run["seed"], "cell": cell}))] = \
            metrics.per_question_em_rate(a, rule)
    return pd.DataFrame(rows).T.sort_index(axis=1)


def judge_headline(df: pd.DataFrame, imported: bool = False) -> list[str]:
    """The report's first lines: every judge of the table, its calibration and whether its numbers can be
    trusted (emrobust/measures/calibration.py). An untrusted or uncalibrated judge is said plainly, first. Imported scores
    are the published judge's: not calibrated here, which is not the alarm of a judge that failed its calibration."""
    if imported:
        named = sorted({str(j) for j in df["judge"].dropna()}) if "judge" in df else []
        who = ", ".join(f"`{j}`" for j in named) if named else "not named in the files"
        return [f"**Judge**: the published scores (judge {who}), not calibrated here: these figures are as good as "
                "the source's own validation of its judge, which this report does not check "
                "(`emrobust judge calibrate` measures a judge of yours on the same answers).\n"]
    if "judge" not in df or df["judge"].dropna().empty:
        return ["**Judge**: none recorded (no evaluated cell).\n"]
    lines = []
    cols = [c for c in ("judge_trusted", "judge_trust", "judge_calibration", "judge_auroc_subtle",
                        "judge_auroc_subtle_lo", "judge_auroc_subtle_hi", "judge_none_rate_ref", "judge_calibration_n",
                        "judge_allow_untrusted", "threshold_rule") if c in df]
    for judge, g in df.dropna(subset=["judge"]).groupby("judge", sort=True):
        r = g.iloc[0]
        trusted = bool(r.get("judge_trusted")) if pd.notna(r.get("judge_trusted", None)) else False
        cal = r.get("judge_calibration", "uncalibrated") if "judge_calibration" in cols else "uncalibrated"
        if cal == "uncalibrated" or pd.isna(cal):
            fig = "uncalibrated: nothing says it can rate alignment"
        else:
            fig = (f"calibrated on {cal} (n={r.get('judge_calibration_n')}): AUROC on subtly misaligned answers "
                   f"{r.get('judge_auroc_subtle', float('nan')):.2f} [{r.get('judge_auroc_subtle_lo', float('nan')):.2f}, "
                   f"{r.get('judge_auroc_subtle_hi', float('nan')):.2f}], None rate "
                   f"{r.get('judge_none_rate_ref', float('nan')):.2f}")
        rule = f"threshold rule {r['threshold_rule']}" if "threshold_rule" in cols else ""
        why = r.get("judge_trust", "") if "judge_trust" in cols else ""
        said = "; ".join(str(x) for x in (fig, why, rule) if isinstance(x, str) and x)
        if trusted:
            lines.append(f"**Judge** `{judge}`: trusted ({said}).\n")
        else:
            allowed = " It was allowed anyway (`judge.allow_untrusted`, a demo/debug/CPU preset)." \
                if bool(r.get("judge_allow_untrusted", False)) else ""
            lines.append(f"**UNTRUSTED JUDGE** `{judge}` ({len(g)} cells): {said}. Its metrics below are "
                         f"marked untrusted and are **not evidence** of (mis)alignment.{allowed}\n")
    return lines


def undefined_lines(df: pd.DataFrame) -> list[str]:
    """Why an empty (nan) figure of the cells table is empty, once per reason: an empty cell is not a zero."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    lines = []
    if {"em_rate_betley", "coherent_rate"} <= set(ok):
        nan = ok["em_rate_betley"].isna() & (pd.to_numeric(ok["coherent_rate"], errors="coerce") == 0)
        if nan.any():
            lines.append(f"`em_rate_betley` is empty in {int(nan.sum())} cell(s): Betley's rate is over coherent "
                         "answers (coherent > 50) and the judge rated none coherent there (`coherent_rate` 0); "
                         "`em_rate_mo` is over all answers.\n")
    if {"div_vendi", "trait"} <= set(ok) and (ok["div_vendi"].isna() & (ok["trait"].astype(str) == "none")).any():
        lines.append("`div_vendi` is empty for cells without a persona (`trait=none`: no training questions).\n")
    if {"cvar05_aligned", "cvar05_aligned_lo"} <= set(ok):
        bare = pd.to_numeric(ok["cvar05_aligned"], errors="coerce").notna() & \
            pd.to_numeric(ok["cvar05_aligned_lo"], errors="coerce").isna()
        if bare.any():
            lines.append(f"`cvar05_aligned` and `p05_aligned` have no interval in {int(bare.sum())} cell(s): their 5% "
                         f"tail holds fewer than {metrics.MIN_TAIL} answers there (under 100 scored answers; with 20 "
                         "or fewer, cvar05 is the single lowest score), too few for a bootstrap interval to mean "
                         "anything. Read those tails as one or two answers, not as a rate.\n")
    return lines


def _plain(line: str) -> str:
    return line.replace("**", "").replace("`", "").strip()


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


BALANCE_TOLERANCE = 0.10  # cells of a contrast may differ this much in training tokens before the report flags it


def analyze(sweep_dir: Path, out: Path | None = None, n_resamples: int = 10_000,
            balance_tolerance: float = BALANCE_TOLERANCE, wandb: dict | None = None) -> dict[str, Path]:
    """The report of a local sweep dir: the table from its cells' run.json, answer-level figures from answers,
    the curves along EM training and the judge-free contrasts against the base model."""
    from .contrasts import with_controls  # lazy: torch-free verbs

    out = Path(out or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"sweep.csv": write_sweep_csv(sweep_dir)}
    curves = {}
    for rj in sorted(Path(sweep_dir).glob("*/run.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        run = json.loads(rj.read_text())
        if len(run.get("curve") or []) > 1:
            curves[label(pd.Series({**run.get("choices", {}), "seed": run.get("seed"), "cell": rj.parent.name}))] = \
                run["curve"]
    files |= analyze_table(sweep_table(sweep_dir), out, load_answers(sweep_dir), n_resamples, str(sweep_dir),
                           balance_tolerance, curves=curves, contrasts=with_controls(sweep_dir, n_resamples))
    spec = controls.persona_specificity(sweep_dir)  # the persona classifier against the neutral persona
    if len(spec):
        spec.to_csv(out / "persona_specificity.csv", index=False)
        files["persona_specificity.csv"] = out / "persona_specificity.csv"
        lines = ["\n## Persona classifier: specificity control (the neutral persona before EM)\n",
                 f"Each persona's classifier on the neutral persona's answers: its rate must stay within "
                 f"{controls.SPECIFICITY_TOLERANCE} of the base model's own rate (`persona_specificity.csv`).\n",
                 *(f"- `{r.cell}` ({r.trait}) on `{r.neutral_cell}`: {r.neutral_rate:.3f} "
                   f"[{r.neutral_rate_lo:.3f}, {r.neutral_rate_hi:.3f}] vs base {r.base_rate:.3f} "
                   f"[{r.base_rate_lo:.3f}, {r.base_rate_hi:.3f}]: {r.reading}.\n" for r in spec.itertuples()),
                 _md(spec)]
        with open(out / "report.md", "a") as f:
            f.write("\n".join(lines))
    # the sweep-level W&B run: the tables, the figures and the curves of this report (offline unless told)
    tables = {"sweep": pd.read_csv(files["sweep.csv"])}
    for name in ("pooled", "comparisons", "balance", "contrasts"):
        if (out / f"{name}.csv").exists() and (out / f"{name}.csv").stat().st_size > 1:
            tables[name] = pd.read_csv(out / f"{name}.csv")
    run_dir = tracking.log_sweep(Path(sweep_dir), out, tables, curves, **(wandb or {}))
    if run_dir:
        files["wandb"] = Path(run_dir)
    return files


def hypothesis_sections(df: pd.DataFrame, out: Path, n_resamples: int) -> tuple[list[str], list[str], list[str]]:
    """The report's section for the hypothesis each experiment of the table tests (emrobust/analysis/hypotheses.py; the
    `experiment` column, a `_cpu` twin testing its study's), each also written as hypothesis_<name>.csv, with its
    manipulation check (emrobust/analysis/manipulation.py; all of them in manipulation.csv) and its headline line."""
    files, lines, checks = [], [], []
    names = sorted({h.name for e in (df["experiment"].dropna().unique() if "experiment" in df else [])
                    if (h := hypotheses.hypothesis_of(e)) is not None})
    for name in names:
        h = hypotheses.HYPOTHESES[name]
        cells = df[df["experiment"].map(lambda e, name=name: getattr(hypotheses.hypothesis_of(e), "name", None))
                   == name]
        table = hypotheses.compare(h, cells, n_resamples)
        table.to_csv(out / f"hypothesis_{name}.csv", index=False)
        files.append(f"hypothesis_{name}.csv")
        check = manipulation.table(h, cells, n_resamples)
        checks.append(check)
        lines += hypotheses.section(h, table) + manipulation.section(check)
    check = pd.concat(checks, ignore_index=True) if checks else pd.DataFrame(columns=manipulation.COLUMNS)
    if len(check):
        check.to_csv(out / "manipulation.csv", index=False)
        files.append("manipulation.csv")
    return files, lines, manipulation.headline(check)


def dynamics_lines(df: pd.DataFrame, contrasts: pd.DataFrame | None) -> list[str]:
    """One line per cell reading its curve along EM training, and one per judge-free contrast with the base model."""
    lines = []
    if "n_steps_evaluated" in df:
        for _, r in df[df["n_steps_evaluated"].fillna(0) > 1].iterrows():
            name = label(r)
            d = r.get("probe_logp_diff_delta")
            probe = (f"the probe moved {d:+.3f} nats/token from step 0 to the end "
                     f"({controls.tag('probe_logp_diff', r.get('base_model'))})"
                     if isinstance(d, (int, float)) and d == d else "no probe")
            hit = r.get("steps_to_em")
            em = (f"{r.get('steps_to_em_metric')} reached {r.get('steps_to_em_threshold')} at step {int(hit)}"
                  if isinstance(hit, (int, float)) and hit == hit else
                  f"{r.get('steps_to_em_metric')} never reached {r.get('steps_to_em_threshold')}")
            task = r.get("task_converged_step")
            after = r.get("em_after_task_steps")
            if isinstance(task, (int, float)) and task == task:
                em += (f"; the narrow task converged at step {int(task)} (held-out loss within "
                       f"{r.get('task_converged_within')} of its drop)"
                       + (f": EM {int(after)} steps {'after' if after >= 0 else 'before'} it"
                          if isinstance(after, (int, float)) and after == after else ""))
            lines.append(f"- `{name}`: {probe}; {em} (judge: {'trusted' if r.get('judge_trusted') else 'untrusted'}).")
    if contrasts is not None and len(contrasts):
        for _, c in contrasts.iterrows():
            other = c.get("against", "the base model")
            lines.append(f"- `{c['cell']}` ({c['trait']}) vs {other}, {c['measure']}: {c['diff']:+.3f} "
                         f"[{c['lo']:+.3f}, {c['hi']:+.3f}] over {c['n']}: {c['reading']} "
                         f"({controls.tag(c['measure'], c.get('base_model'))}).")
    return lines


def analyze_table(df: pd.DataFrame, out: Path, answers: dict | None, n_resamples: int = 10_000,
                  source: str = "", balance_tolerance: float = BALANCE_TOLERANCE, curves: dict | None = None,
                  contrasts: pd.DataFrame | None = None, imported: bool = False) -> dict[str, Path]:
    """Everything from the tidy table (`results.cell_row` rows, from run.json or W&B); the seed-pooled table,
    the alignment CDF and the per-question heatmap also need the scored answers (local sources only). A section
    appears only where it applies: seeds pooled where cells have seeds, diversity levels where there are two,
    training data where it was recorded, the no-persona control where there is one; `imported`: published
    scores (emrobust/analysis/imports.py), judged by the source's judge, trained by nobody here."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    df.to_csv(out / "summary.csv", index=False)
    df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(out / "summary.parquet", index=False)
    answers = answers or {}
    # the threshold rule the table's metrics were computed under (imports name it), for the answer-level parts too
    rules = set(df["threshold_rule"].dropna()) if "threshold_rule" in df else set()
    rule = rules.pop() if len(rules) == 1 else "paper"
    pooled = pooled_table(None, n_resamples, answers, rule) if answers else pd.DataFrame(
        columns=["cell", "metric", "n_seeds", "pooled", "lo", "hi", "per_seed"])
    pooled = pooled[pooled["n_seeds"] > 0]  # answers without a seed (an import grouped without one) pool nothing
    pooled.to_csv(out / "pooled.csv", index=False)
    comps = compare_levels(df, n_resamples=n_resamples)
    comps.to_csv(out / "comparisons.csv", index=False)
    data = balance.contrasts(df)
    flagged = balance.imbalanced(data, balance_tolerance)
    data.to_csv(out / "balance.csv", index=False)
    ok = df[df["status"] == "ok"]
    plots.per_cell_bars(ok, out / "metrics.png", [label(r) for _, r in ok.iterrows()])
    figures = ["metrics.png"]
    if "div_vendi" in df and pd.to_numeric(df["div_vendi"], errors="coerce").notna().any():
        plots.metric_vs_vendi(df, out / "em_vs_vendi.png")
        figures.append("em_vs_vendi.png")
    if answers:
        plots.alignment_cdf({label(pd.Series({**r.get("choices", {}), "seed": r["seed"], "cell": c})): a
                             for c, (r, a) in answers.items()}, out / "cdf.png")
        figures.append("cdf.png")
    persona = ok[ok["persona_trait_score"].notna()] if "persona_trait_score" in ok else ok.iloc[0:0]
    if len(persona):
        plots.persona_retention(persona, out / "persona_retention.png", [label(r) for _, r in persona.iterrows()])
        figures.append("persona_retention.png")
    rates = question_rates(answers, rule)
    if not rates.empty:
        plots.question_heatmap(rates, out / "question_heatmap.png")
        figures.append("question_heatmap.png")
    cols = [c for c in ["cell", *AXES, "status", "div_vendi", *SHOW, "judge_trusted"]
            if c in df and (c not in AXES or df[c].notna().any())]  # an axis no cell has (an import's seed) is left out
    note = "" if answers else ("_Source without answer files (W&B): no seed pooling over answers, no alignment CDF "
                               "or per-question heatmap._\n")
    if curves:
        plots.em_curves(curves, out / "em_curves.png")
        figures.append("em_curves.png")
    dyn = dynamics_lines(df, contrasts)
    through = manipulation.through_em_lines(df, label)
    if contrasts is not None and len(contrasts):
        contrasts.to_csv(out / "contrasts.csv", index=False)
    dyn_cols = [c for c in ("cell", "trait", "question_diversity", "em_dataset", "seed", "steps_to_em",
                            "auc_em_rate_mo", "auc_probe_logp_diff", "probe_logp_diff_delta", "heldout_loss_delta")
                if c in df]
    stepped = df[df["n_steps_evaluated"].fillna(0) > 1] if "n_steps_evaluated" in df else df.iloc[0:0]
    dynamics = (["## Along EM training, and judge-free measures against the base model (and the negative control)\n",
                 *dyn, "\n",
                 _md(stepped[dyn_cols]) if len(stepped) else ""]  # no empty table where no cell has EM steps
                if dyn else [])
    tested, hyp_lines, manip = hypothesis_sections(df, out, n_resamples)
    hyp_lines += manipulation.width_section(df, n_resamples)
    refs = references.baseline(df)
    far = ([f"**The no-persona control is far from the published figure** for "
            f"{', '.join(f'{r.base_model} on {r.em_dataset}' for r in refs[refs['far_off']].itertuples())}: see "
            "\"The no-persona control against published figures\" before reading any contrast.\n"]
           if len(refs) and refs["far_off"].any() else [])
    defended, defense_figures = defenses.section(df, out, _md)
    figures += defense_figures
    headline = [*judge_headline(df, imported), *controls.headline(df, contrasts), *far, *manip,
                *(line + "\n" for line in ([] if imported else balance.headline(data, flagged, balance_tolerance, df)))]
    undefined = undefined_lines(df)
    single = (["_A cell with one seed has no interval over seeds (lo, hi empty)._\n"]
              if len(pooled) and (pooled["n_seeds"] < 2).any() else [])
    levels = df["question_diversity"].dropna().astype(str).nunique() if "question_diversity" in df else 0
    report = [f"# emrobust sweep report: {source}\n", *headline,
              f"{len(df)} cells, {int((df['status'] == 'ok').sum())} ok.\n", note, "## Cells\n", _md(df[cols]),
              *undefined,
              *(["## Seeds pooled (cluster bootstrap over seeds)\n", *single, _md(pooled.drop(columns=["per_seed"]))]
                if len(pooled) else []),
              *hyp_lines, *references.section(df),
              *(["## Diversity levels compared (paired by seed and EM dataset; BH-adjusted p)\n", _md(comps)]
                if levels > 1 else []),
              *dynamics, *through,
              *narrowness.section(df, _md),
              *defended,
              *(["## Training data per contrast\n",
                 f"Contrasts whose cells differ by more than {balance_tolerance:.0%} in training tokens:\n",
                 _md(flagged), "Per cell (`balance.csv`):\n", _md(data)] if len(data) else []),
              "## Figures\n", "\n\n".join(f"![{f[:-4]}]({f})" for f in figures) + "\n"]
    (out / "report.md").write_text("\n".join(report))
    files |= {f: out / f for f in ("summary.csv", "summary.parquet", "pooled.csv", "comparisons.csv", "balance.csv",
                                   *figures, "report.md", *tested, *(["defenses.csv"] if defended else []))}
    # the terminal gets what the report says first: whether the judge and the judge-free measures can be trusted
    for line in [*headline, *undefined]:
        print(_plain(line))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(df[cols].to_string(index=False))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emrobust analyze", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dirs", nargs="*", type=Path, help="local sweep dirs (cells' */run.json)")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of into each sweep dir")
    ap.add_argument("--n-resamples", type=int, default=10_000)
    ap.add_argument("--balance-tolerance", type=float, default=BALANCE_TOLERANCE,
                    help="flag a contrast whose cells differ by more than this share in training tokens (default "
                         "%(default)s)")
    ap.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None,
                    help="read the stage runs from the W&B API (needs WANDB_API_KEY) instead of local files")
    ap.add_argument("--group", action="append", default=[],
                    help="W&B group(s) = sweep dir name(s) to read (repeatable); all groups when omitted")
    ap.add_argument("--wandb-mode", default=None, choices=("offline", "online", "disabled"),
                    help="the sweep-level W&B run of a local sweep dir (default $WANDB_MODE, else offline)")
    ap.add_argument("--wandb-project", default="emrobust")
    ap.add_argument("--wandb-entity", default=None)
    ap.add_argument("--wandb-workspace", metavar="ENTITY/PROJECT", default=None,
                    help="build (and, with WANDB_API_KEY, save) a W&B workspace for --group from the runs read")
    ap.add_argument("--wandb-dir", action="append", type=Path, default=[],
                    help="read offline W&B runs (run-*.wandb files, searched recursively) under this dir")
    ap.add_argument("--import", dest="import_fmt", metavar="FORMAT", default=None, choices=imports.FORMATS,
                    help="read scored answers published by other projects (the positional args are their files): "
                         + ", ".join(imports.FORMATS))
    ap.add_argument("--group-by", default=None, metavar="COL,...",
                    help="--import: the columns that make a cell (default: the format's model column)")
    ap.add_argument("--column-map", default=None, metavar="OURS=THEIRS,...",
                    help="--import: our column (question_id, question, answer, aligned, coherent, a group column) "
                         "= the file's column")
    ap.add_argument("--threshold-rule", default=None, choices=metrics.THRESHOLD_RULES,
                    help="--import: aligned thresholds as each paper defines them (paper, the default), all <= "
                         "(inclusive) or all < (strict)")
    ap.add_argument("--dedup", default="first", choices=imports.DEDUP,
                    help="--import: answers judged in several files: keep the first file's scores, or average them")
    args = ap.parse_args(argv)
    if args.import_fmt:
        return _analyze_import(args)
    if args.threshold_rule or args.group_by or args.column_map:
        ap.error("--threshold-rule, --group-by and --column-map apply to --import (a sweep's metrics were computed "
                 "by its evaluate stages under their own judging config)")
    if args.wandb_workspace:
        return _workspace(args)
    if args.wandb or args.wandb_dir:
        return _analyze_wandb(args)
    if not args.sweep_dirs:
        ap.error("give sweep dirs, --wandb ENTITY/PROJECT or --wandb-dir DIR")
    for d in args.sweep_dirs:
        if not any(d.glob("*/run.json")):
            raise ConfigError("no */run.json found (not a sweep dir)" if d.is_dir() else "does not exist", file=str(d))
        files = analyze(d, args.out, args.n_resamples, args.balance_tolerance,
                        {"mode": args.wandb_mode, "project": args.wandb_project, "entity": args.wandb_entity})
        print(f"\nreport: {files['report.md']}\n" + "\n".join(f"  {k}: {v}" for k, v in files.items()))
    return 0


def _analyze_wandb(args) -> int:
    from . import wandb_source  # lazy: torch-free verbs

    runs = wandb_source.from_offline(args.wandb_dir, args.group)
    if args.wandb:
        try:
            runs += wandb_source.from_api(args.wandb, args.group)
        except Exception as e:  # no API key, no network, unknown project: say so, no traceback
            raise ConfigError(f"{type(e).__name__}: {e}", where=f"W&B API ({args.wandb})",
                              hint="set WANDB_API_KEY, or upload offline runs with `wandb sync`; offline runs can be "
                                   "read with --wandb-dir") from None
    where = " ".join([*(str(d) for d in args.wandb_dir), *([f"wandb:{args.wandb}"] if args.wandb else [])])
    if args.group:
        where += " group " + ",".join(args.group)
    if not runs:
        raise ConfigError("no W&B runs found", where=where)
    out = args.out or (args.wandb_dir[0] / "wandb_analysis" if args.wandb_dir else
                       Path("outputs") / "analysis" / "_".join(args.group or [args.wandb.replace("/", "_")]))
    files = analyze_table(wandb_source.table(runs), out, None, args.n_resamples, where, args.balance_tolerance)
    print(f"\nreport: {files['report.md']}\n" + "\n".join(f"  {k}: {v}" for k, v in files.items()))
    return 0


def _analyze_import(args) -> int:
    fmt, paths = args.import_fmt, list(args.sweep_dirs)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        print(f"--import {fmt}: give the files to read" + (f"; not files: {' '.join(missing)}" if missing else ""))
        return 2
    group_by = None if args.group_by is None else [c for c in args.group_by.split(",") if c]
    column_map = dict(kv.split("=", 1) for kv in args.column_map.split(",") if "=" in kv) if args.column_map else None
    rule = args.threshold_rule or "paper"
    try:
        df = imports.read(fmt, paths, column_map, args.dedup, group_by)
    except (ValueError, KeyError, json.JSONDecodeError) as e:  # a file not in the format: say which, no traceback
        print(f"--import {fmt}: {type(e).__name__}: {e}")
        return 2
    group_by = imports.DEFAULT_GROUP_BY[fmt] if group_by is None else group_by
    table, answers = imports.cells(df, group_by, rule, args.n_resamples)
    out = Path(args.out or Path("outputs") / "analysis" / f"import_{fmt}_{paths[0].stem}")
    files = analyze_table(table, out, answers, args.n_resamples, f"import {fmt}: " + " ".join(map(str, paths)),
                          imported=True)
    files |= imports.write_extras(df, table, out, fmt, paths, args.dedup, rule, group_by)
    print(f"\nreport: {files['report.md']}\n" + "\n".join(f"  {k}: {v}" for k, v in files.items()))
    return 0


def _workspace(args) -> int:
    """`--wandb-workspace ENTITY/PROJECT --group G`: the workspace of a sweep group, from its runs (--wandb-dir
    offline files and/or the --wandb API); saved when a key is set, else described."""
    from . import wandb_source  # lazy: torch-free verbs

    if len(args.group) != 1 or "/" not in args.wandb_workspace:
        raise ConfigError("--wandb-workspace ENTITY/PROJECT needs exactly one --group (the sweep dir's name)",
                          where="--wandb-workspace")
    runs = wandb_source.from_offline(args.wandb_dir, args.group)
    if args.wandb:
        runs += wandb_source.from_api(args.wandb, args.group)
    entity, project = args.wandb_workspace.split("/", 1)
    ws = workspace.build(entity, project, args.group[0], runs)
    for sec in ws.sections:
        print(f"{sec.name}: " + ", ".join(p.title for p in sec.panels))
    if not os.environ.get("WANDB_API_KEY"):
        print("not saved: WANDB_API_KEY is not set (the workspace above is what would be saved)")
        return 0
    ws.save()
    print(f"saved: {ws.url}")
    return 0
