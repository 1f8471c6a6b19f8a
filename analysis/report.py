"""`emrobust analyze <sweep dir> [...]`: one tidy table from the cells' run.json (and answers) files, plots, seeds
pooled with a cluster bootstrap, paired comparisons between diversity levels, and a markdown report.

Writes into each sweep dir (or `--out`): sweep.csv, summary.csv, summary.parquet, pooled.csv, comparisons.csv,
metrics.png, em_vs_vendi.png, cdf.png, question_heatmap.png, report.md.

`--wandb ENTITY/PROJECT --group G` (the W&B API) or `--wandb-dir DIR` (offline run-*.wandb files) build the same
table from the stages' W&B runs instead (analysis/wandb_source.py); the answer-level parts need local answers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from emrobust import metrics
from emrobust.results import sweep_table, write_sweep_csv

from . import plots
from .stats import compare_levels

AXES = ["trait", "question_diversity", "introspection", "em_dataset", "eval", "base_model", "seed"]
SHOW = ["em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
        "none_rate", "n_answers"]
POOLED = {
    "em_rate_betley": lambda d: metrics.em_rate_betley(d["aligned"], d["coherent"]),
    "em_rate_mo": lambda d: metrics.em_rate_mo(d["aligned"], d["coherent"]),
    "mean_aligned": lambda d: metrics.mean_aligned(d["aligned"]),
    "cvar05_aligned": lambda d: metrics.cvar_aligned(d["aligned"], 0.05),
}


def label(row: pd.Series) -> str:
    parts = [str(row["trait"])] if "trait" in row else [str(row["cell"])]
    if row.get("trait") not in (None, "none") and "question_diversity" in row:
        parts.append(str(row["question_diversity"]))
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


def pooled_table(sweep_dir: Path, n_resamples: int = 10_000, answers=None) -> pd.DataFrame:
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
            r = metrics.pooled_over_seeds(df, fn, n_resamples=n_resamples, seed=0)
            rows.append({"cell": " ".join(key), "metric": name, "n_seeds": len(r["per_seed"]), "pooled": r["pooled"],
                         "lo": r["lo"], "hi": r["hi"], "per_seed": json.dumps(r["per_seed"], default=float)})
    return pd.DataFrame(rows, columns=["cell", "metric", "n_seeds", "pooled", "lo", "hi", "per_seed"])


def question_rates(answers) -> pd.DataFrame:
    rows = {}
    for cell, (run, a) in answers.items():
        rows[label(pd.Series({**run.get("choices", {}), "seed": run["seed"], "cell": cell}))] = \
            metrics.per_question_em_rate(a)
    return pd.DataFrame(rows).T.sort_index(axis=1)


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def analyze(sweep_dir: Path, out: Path | None = None, n_resamples: int = 10_000) -> dict[str, Path]:
    """The report of a local sweep dir: the table from its cells' run.json, answer-level figures from answers."""
    out = Path(out or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"sweep.csv": write_sweep_csv(sweep_dir)}
    return files | analyze_table(sweep_table(sweep_dir), out, load_answers(sweep_dir), n_resamples, str(sweep_dir))


def analyze_table(df: pd.DataFrame, out: Path, answers: dict | None, n_resamples: int = 10_000,
                  source: str = "") -> dict[str, Path]:
    """Everything from the tidy table (`results.cell_row` rows, from run.json or W&B); the seed-pooled table,
    the alignment CDF and the per-question heatmap also need the scored answers (local sources only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    df.to_csv(out / "summary.csv", index=False)
    df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(out / "summary.parquet", index=False)
    answers = answers or {}
    pooled = pooled_table(None, n_resamples, answers) if answers else pd.DataFrame(
        columns=["cell", "metric", "n_seeds", "pooled", "lo", "hi", "per_seed"])
    pooled.to_csv(out / "pooled.csv", index=False)
    comps = compare_levels(df, n_resamples=n_resamples)
    comps.to_csv(out / "comparisons.csv", index=False)
    ok = df[df["status"] == "ok"]
    plots.per_cell_bars(ok, out / "metrics.png", [label(r) for _, r in ok.iterrows()])
    plots.metric_vs_vendi(df, out / "em_vs_vendi.png")
    figures = ["metrics.png", "em_vs_vendi.png"]
    if answers:
        plots.alignment_cdf({label(pd.Series({**r.get("choices", {}), "seed": r["seed"], "cell": c})): a
                             for c, (r, a) in answers.items()}, out / "cdf.png")
        figures.append("cdf.png")
    persona = ok[ok["persona_trait_score"].notna()] if "persona_trait_score" in ok else ok.iloc[0:0]
    if len(persona):
        plots.persona_retention(persona, out / "persona_retention.png", [label(r) for _, r in persona.iterrows()])
        figures.append("persona_retention.png")
    rates = question_rates(answers)
    if not rates.empty:
        plots.question_heatmap(rates, out / "question_heatmap.png")
        figures.append("question_heatmap.png")
    cols = [c for c in ["cell", *AXES, "status", "div_vendi", *SHOW] if c in df]
    note = "" if answers else ("_Source without answer files (W&B): no seed pooling over answers, no alignment CDF "
                               "or per-question heatmap._\n")
    report = [f"# emrobust sweep report: {source}\n", f"{len(df)} cells, {int((df['status'] == 'ok').sum())} ok.\n",
              note, "## Cells\n", _md(df[cols]),
              "## Seeds pooled (cluster bootstrap over seeds)\n", _md(pooled.drop(columns=["per_seed"])),
              "## Diversity levels compared (paired by seed and EM dataset; BH-adjusted p)\n", _md(comps),
              "## Figures\n", "\n\n".join(f"![{f[:-4]}]({f})" for f in figures) + "\n"]
    (out / "report.md").write_text("\n".join(report))
    files |= {f: out / f for f in ("summary.csv", "summary.parquet", "pooled.csv", "comparisons.csv", *figures,
                                   "report.md")}
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(df[cols].to_string(index=False))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emrobust analyze", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dirs", nargs="*", type=Path, help="local sweep dirs (cells' */run.json)")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of into each sweep dir")
    ap.add_argument("--n-resamples", type=int, default=10_000)
    ap.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None,
                    help="read the stage runs from the W&B API (needs WANDB_API_KEY) instead of local files")
    ap.add_argument("--group", action="append", default=[],
                    help="W&B group(s) = sweep dir name(s) to read (repeatable); all groups when omitted")
    ap.add_argument("--wandb-dir", action="append", type=Path, default=[],
                    help="read offline W&B runs (run-*.wandb files, searched recursively) under this dir")
    args = ap.parse_args(argv)
    if args.wandb or args.wandb_dir:
        return _analyze_wandb(args)
    if not args.sweep_dirs:
        ap.error("give sweep dirs, --wandb ENTITY/PROJECT or --wandb-dir DIR")
    for d in args.sweep_dirs:
        if not any(d.glob("*/run.json")):
            from emrobust.errors import ConfigError  # the CLI prints it as one line, exit 2

            raise ConfigError("no */run.json found (not a sweep dir)" if d.is_dir() else "does not exist", file=str(d))
        files = analyze(d, args.out, args.n_resamples)
        print(f"\nreport: {files['report.md']}\n" + "\n".join(f"  {k}: {v}" for k, v in files.items()))
    return 0


def _analyze_wandb(args) -> int:
    from . import wandb_source

    runs = wandb_source.from_offline(args.wandb_dir, args.group)
    if args.wandb:
        try:
            runs += wandb_source.from_api(args.wandb, args.group)
        except Exception as e:  # no API key, no network, unknown project: say so, no traceback
            from emrobust.errors import ConfigError

            raise ConfigError(f"{type(e).__name__}: {e}", where=f"W&B API ({args.wandb})",
                              hint="set WANDB_API_KEY, or upload offline runs with `wandb sync`; offline runs can be "
                                   "read with --wandb-dir") from None
    where = " ".join([*(str(d) for d in args.wandb_dir), *([f"wandb:{args.wandb}"] if args.wandb else [])])
    if args.group:
        where += " group " + ",".join(args.group)
    if not runs:
        from emrobust.errors import ConfigError

        raise ConfigError("no W&B runs found", where=where)
    out = args.out or (args.wandb_dir[0] / "wandb_analysis" if args.wandb_dir else
                       Path("outputs") / "analysis" / "_".join(args.group or [args.wandb.replace("/", "_")]))
    files = analyze_table(wandb_source.table(runs), out, None, args.n_resamples, where)
    print(f"\nreport: {files['report.md']}\n" + "\n".join(f"  {k}: {v}" for k, v in files.items()))
    return 0
