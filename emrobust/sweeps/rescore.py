"""`emrobust rescore <run dir | sweep dir> [overrides]`: score a cell's saved answers again with another judge.

Composes each cell again from its run.json overrides plus the new ones (e.g. `judge=smollm2_135m`)
and runs it through the store: every stage up to `sample` is already there (rescore refuses otherwise: it never
samples or trains), so only `evaluate` runs, and its result is cached like any cell's (a later cell with that
judge reuses it). Writes `<run>/rescore/<judge>/`: the re-run's run.json, `answers.jsonl` (both judges' scores
side by side), `metrics.json`, `agreement.json` (Spearman on aligned, Cohen's kappa on the misaligned label
aligned < 30) and `summary.json`; for a sweep dir also `rescore_<judge>.csv`, one row per cell.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

from ..core.compose import compose
from ..core.store import Store
from ..errors import ConfigError
from ..stages import read_jsonl, write_jsonl

log = logging.getLogger("emrobust.sweeps.rescore")
HELP = ("usage: emrobust rescore <run dir | sweep dir> [overrides, e.g. judge=smollm2_135m]\n"
        "Scores the saved answers of each cell again with the judge the overrides describe (nothing is sampled or\n"
        "trained: the cell's answers must be in the store) and reports the agreement with the original judge.")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


def rescore_run(run_dir: Path, overrides: list[str]) -> dict:
    """Re-score one cell (its run dir holds run.json)."""
    from ..engine import pipeline  # lazy: torch-free verbs
    from ..measures import metrics  # lazy: slow import

    run_dir = Path(run_dir)
    rj = run_dir / "run.json"
    if not rj.exists():
        raise ConfigError("not a run dir (no run.json)", file=str(run_dir))
    run = json.loads(rj.read_text())
    old = next((s for s in run.get("stages", []) if s["name"] == "evaluate" and s.get("artifact")), None)
    if old is None or not (Path(old["artifact"]) / "answers.jsonl").exists():
        raise ConfigError("run has no evaluate artifact with answers.jsonl", file=str(rj))
    cell_overrides = [*run["overrides"], *overrides]
    cfg = compose(cell_overrides)
    nodes = pipeline.plan(cfg)
    store = Store(cfg.paths.artifacts)
    missing = [n for n in nodes if n.stage not in ("base", "evaluate") and not store.is_complete(n.stage, n.key)]
    if missing:
        raise ConfigError(f"rescore only judges saved answers, but {missing[0].id} {missing[0].key} is not in the "
                          f"store {store.root} (the overrides change more than the judge, or the store moved)",
                          file=str(rj))
    ev = next(n for n in nodes if n.id == "evaluate")
    j = cfg.judge
    out = run_dir / "rescore" / f"{_slug(f'{j.backend}_{j.model}')}-{ev.key[:8]}"
    summary = pipeline.run_cell(cfg, out, cell_overrides)
    new_stage = next(s for s in summary["stages"] if s["name"] == "evaluate")
    art = Path(new_stage["artifact"])
    manifest = json.loads((art / "manifest.json").read_text())
    rows = read_jsonl(Path(old["artifact"]) / "answers.jsonl")
    new = read_jsonl(art / "answers.jsonl")
    agree = metrics.judge_agreement([r.get("aligned") for r in rows], [r["aligned"] for r in new],
                                    [r.get("coherent") for r in rows], [r["coherent"] for r in new])
    m = manifest["metrics"]
    agree |= {"judge_a": run.get("metrics", {}).get("judge"), "judge_b": m["judge"]}
    for r_old, r_new in zip(rows, new):  # per answer: both judges' scores side by side
        r_new["orig_aligned"], r_new["orig_coherent"] = r_old.get("aligned"), r_old.get("coherent")
    write_jsonl(out / "answers.jsonl", new)
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    (out / "agreement.json").write_text(json.dumps(agree, indent=2, default=str))
    calls = manifest.get("judge_calls", 0) if new_stage["status"] == "executed" else 0
    result = {"run_dir": str(run_dir), "out": str(out), "overrides": list(overrides), "judge": m["judge"],
              "judge_prompt_ids": manifest.get("judge_prompt_ids"), "judge_calls": calls,
              "evaluate": new_stage["status"], "n_answers": len(new), "metrics": m,
              "orig_metrics": run.get("metrics", {}), "agreement": agree}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def rescore(path: Path, overrides: list[str]) -> list[dict]:
    """A run dir (has run.json) or a sweep dir (cells `*/run.json`)."""
    import pandas as pd  # lazy: torch-free verbs

    path = Path(path)
    cells = [path] if (path / "run.json").exists() else sorted(
        (p.parent for p in path.glob("*/run.json")), key=lambda p: (len(p.name), p.name))
    if not cells:
        raise ConfigError("neither a run dir nor a sweep dir (no run.json found)", file=str(path))
    out = [rescore_run(c, overrides) for c in cells]
    if path not in cells:
        table = pd.DataFrame([{"cell": Path(s["run_dir"]).name, "judge": s["judge"], "judge_calls": s["judge_calls"],
                               **{f"orig_{k}": s["orig_metrics"].get(k) for k in ("judge", "em_rate_betley")},
                               **{k: v for k, v in s["metrics"].items() if not isinstance(v, (dict, list))},
                               **{k: v for k, v in s["agreement"].items() if k not in ("judge_a", "judge_b")}}
                              for s in out])
        table.to_csv(path / f"rescore_{Path(out[0]['out']).name}.csv", index=False)
    return out


def format_summary(results: list[dict]) -> str:
    lines = [f"{'cell':<24} {'n':>5} {'calls':>6} {'em_betley old→new':>20} {'spearman':>9} {'kappa':>7}"]
    for s in results:
        a, m, o = s["agreement"], s["metrics"], s["orig_metrics"]
        lines.append(f"{Path(s['run_dir']).name[:24]:<24} {s['n_answers']:>5} {s['judge_calls']:>6} "
                     f"{o.get('em_rate_betley', float('nan')):>9.3f}→{m['em_rate_betley']:<9.3f} "
                     f"{a['aligned_spearman']:>9.3f} {a['misaligned_kappa']:>7.3f}")
    if results:
        lines.append(f"judge: {results[0]['judge']} (was {results[0]['agreement']['judge_a']})")
        lines.append(f"written under <run>/rescore/{Path(results[0]['out']).name}/")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO)
    results = rescore(Path(argv[0]), argv[1:])  # a ConfigError is reported by the CLI (one line, exit 2)
    print(format_summary(results))
    return 0
