"""`emrobust analyze <sweep dir>`: the per-cell table (from run.json files), sweep.csv and a PNG plot."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from emrobust import metrics  # noqa: E402
from emrobust.pipeline import sweep_table, write_sweep_csv  # noqa: E402

AXES = ["trait", "question_diversity", "introspection", "em_dataset", "eval", "base_model", "seed"]
SHOW = ["em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
        "none_rate", "n_answers"]


POOLED = {
    "em_rate_betley": lambda d: metrics.em_rate_betley(d["aligned"], d["coherent"]),
    "em_rate_mo": lambda d: metrics.em_rate_mo(d["aligned"], d["coherent"]),
    "mean_aligned": lambda d: metrics.mean_aligned(d["aligned"]),
    "cvar05_aligned": lambda d: metrics.cvar_aligned(d["aligned"], 0.05),
}


def pooled_table(sweep_dir: Path, n_resamples: int = 10_000) -> pd.DataFrame:
    """Cells that differ only in `seed`, pooled: per-seed values, the pooled estimate over all their answers,
    and a cluster-bootstrap interval that resamples whole seeds (training runs), not answers."""
    groups: dict[tuple, list[pd.DataFrame]] = {}
    for rj in sorted(Path(sweep_dir).glob("*/run.json")):
        run = json.loads(rj.read_text())
        ev = next((s for s in run["stages"] if s["name"] == "evaluate" and s["artifact"]), None)
        if run["status"] != "ok" or ev is None or not (Path(ev["artifact"]) / "answers.jsonl").exists():
            continue
        key = tuple(sorted(o for o in run["overrides"] if o.split("=", 1)[0].lstrip("+~") != "seed"))
        ans = pd.read_json(Path(ev["artifact"]) / "answers.jsonl", lines=True)
        ans["seed"] = run["seed"]
        groups.setdefault(key, []).append(ans[["seed", "question_id", "aligned", "coherent"]])
    rows = []
    for key, frames in groups.items():
        df = pd.concat(frames, ignore_index=True).astype({"aligned": float, "coherent": float})
        for name, fn in POOLED.items():
            r = metrics.pooled_over_seeds(df, fn, n_resamples=n_resamples, seed=0)
            rows.append({"cell": " ".join(key), "metric": name, "n_seeds": len(r["per_seed"]), "pooled": r["pooled"],
                         "lo": r["lo"], "hi": r["hi"], "per_seed": json.dumps(r["per_seed"], default=float)})
    return pd.DataFrame(rows)


def label(row: pd.Series) -> str:
    parts = [f"{row['trait']}" if "trait" in row else row["cell"]]
    if row.get("trait") not in (None, "none") and "question_diversity" in row:
        parts.append(str(row["question_diversity"]))
    if "seed" in row and pd.notna(row["seed"]):
        parts.append(f"s{int(row['seed'])}")
    return "/".join(parts)


def plot(df: pd.DataFrame, out: Path, metrics: tuple[str, ...] = ("mean_aligned", "cvar05_aligned", "em_rate_mo")) -> Path:
    """One bar chart per metric: the mean, the tail (CVaR 5%: mean of the lowest 5% of alignment scores) and
    an EM rate, each with its 95% interval."""
    ok = df[df["status"] == "ok"].copy()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, m in zip(axes, metrics):
        if m not in ok:
            continue
        y = ok[m].astype(float)
        lo = (y - ok.get(f"{m}_lo", y).astype(float)).clip(lower=0)
        hi = (ok.get(f"{m}_hi", y).astype(float) - y).clip(lower=0)
        ax.bar(range(len(ok)), y.fillna(0), yerr=[lo.fillna(0), hi.fillna(0)], capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(ok)), [label(r) for _, r in ok.iterrows()], rotation=30, ha="right")
        ax.set_ylabel(m)
        ax.set_title(f"{m} per cell (95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emrobust analyze", description=__doc__)
    ap.add_argument("sweep_dirs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for d in args.sweep_dirs:
        if not any(d.glob("*/run.json")):
            print(f"{d}: no */run.json found")
            return 2
        csv = write_sweep_csv(d)
        df = sweep_table(d)
        cols = [c for c in ["cell", *AXES, "status", "executed", "cached", "div_vendi", *SHOW] if c in df]
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
            print(df[cols].to_string(index=False))
        png = plot(df, d / "metrics.png")
        pooled = pooled_table(d)
        pooled.to_csv(d / "pooled.csv", index=False)
        print(f"\nsweep table: {csv}\nplot:        {png}\npooled over seeds (cluster bootstrap): {d / 'pooled.csv'}")
    return 0
