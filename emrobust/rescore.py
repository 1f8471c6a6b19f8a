"""`emrobust rescore <run dir | sweep dir> [overrides]`: re-score saved answers with another judge config.

Reads each cell's run.json and its evaluate artifact's answers.jsonl (never modified), composes the cell's config
again with the original overrides plus the new ones (e.g. `eval.judge.backend=openai eval.judge.model=gpt-4o`),
scores through the judge cache (a judge already seen costs no judge call), and writes into the run dir:
`rescore/<judge>/{answers.jsonl, metrics.json, agreement.json, summary.json}`. For a sweep dir, also
`rescore_<judge>.csv` with one row per cell. Agreement with the original judge: Spearman on aligned scores,
Cohen's kappa on the misaligned label (aligned < 30).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pandas as pd

from . import judges, metrics, models
from .data import evalsets
from .errors import ConfigError
from .stages import read_jsonl, stage_seed, write_jsonl
from .stages import evaluate as ev
from .store import stable_hash

log = logging.getLogger("emrobust.rescore")
SCORE_KEYS = ("aligned", "coherent", "aligned_mass", "coherent_mass", "aligned_judge", "coherent_judge")


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from .config import register

    register()
    with initialize_config_dir(config_dir=str(models.CONF_DIR), version_base="1.3"):
        return hcompose(config_name="config", overrides=list(overrides))


def judge_slug(judge_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_id)[:60] + "-" + stable_hash(judge_id, 8)


def rescore_run(run_dir: Path, overrides: list[str], judge=None) -> dict:
    """Re-score one cell. `judge` (optional) reuses an already-built judge across the cells of a sweep."""
    run_dir = Path(run_dir)
    rj = run_dir / "run.json"
    if not rj.exists():
        raise ConfigError("not a run dir (no run.json)", file=str(run_dir))
    run = json.loads(rj.read_text())
    stage = next((s for s in run.get("stages", []) if s["name"] == "evaluate" and s.get("artifact")), None)
    if stage is None or not (Path(stage["artifact"]) / "answers.jsonl").exists():
        raise ConfigError("run has no evaluate artifact with answers.jsonl", file=str(rj))
    cfg = compose([*run["overrides"], *overrides])
    judges.validate(cfg.eval.judge)
    rows = read_jsonl(Path(stage["artifact"]) / "answers.jsonl")
    qs = evalsets.load(evalsets.resolve_path(cfg.eval, cfg.paths))  # all of them: judge prompts by question id
    if judge is None:
        judge = judges.make(cfg.eval.judge, cfg.paths.cache, models.device(cfg.pipeline.device))
    new = [{k: v for k, v in r.items() if k not in SCORE_KEYS} for r in rows]
    calls0 = judge.calls
    ids = ev.judge_rows(judge, new, qs, Path(cfg.paths.cache) / "judge" if cfg.eval.judge.cache else None)
    calls = judge.calls - calls0
    m = ev.compute_metrics(new, judge.id, cfg.eval.n_bootstrap, stage_seed(cfg.seed, "evaluate"))
    agree = metrics.judge_agreement([r.get("aligned") for r in rows], [r["aligned"] for r in new],
                                    [r.get("coherent") for r in rows], [r["coherent"] for r in new])
    old_judge = run.get("metrics", {}).get("judge")
    agree |= {"judge_a": old_judge, "judge_b": judge.id}
    out = run_dir / "rescore" / judge_slug(judge.id)
    out.mkdir(parents=True, exist_ok=True)
    for r_old, r_new in zip(rows, new):  # per answer: both judges' scores side by side
        r_new["orig_aligned"], r_new["orig_coherent"] = r_old.get("aligned"), r_old.get("coherent")
    write_jsonl(out / "answers.jsonl", new)
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    (out / "agreement.json").write_text(json.dumps(agree, indent=2, default=str))
    summary = {"run_dir": str(run_dir), "out": str(out), "overrides": list(overrides), "judge": judge.id,
               "judge_prompt_ids": ids, "judge_calls": calls, "n_answers": len(new), "metrics": m,
               "orig_metrics": run.get("metrics", {}), "agreement": agree}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["_judge"] = judge
    return summary


def rescore(path: Path, overrides: list[str]) -> list[dict]:
    """A run dir (has run.json) or a sweep dir (cells `*/run.json`)."""
    path = Path(path)
    cells = [path] if (path / "run.json").exists() else sorted(
        (p.parent for p in path.glob("*/run.json")), key=lambda p: (len(p.name), p.name))
    if not cells:
        raise ConfigError("neither a run dir nor a sweep dir (no run.json found)", file=str(path))
    out, judge = [], None
    for c in cells:
        s = rescore_run(c, overrides, judge)
        judge = s.pop("_judge")
        out.append(s)
    if len(cells) > 1 or path not in cells:
        table = pd.DataFrame([{"cell": Path(s["run_dir"]).name, "judge": s["judge"], "judge_calls": s["judge_calls"],
                               **{f"orig_{k}": s["orig_metrics"].get(k) for k in ("judge", "em_rate_betley")},
                               **{k: v for k, v in s["metrics"].items() if not isinstance(v, (dict, list))},
                               **{k: v for k, v in s["agreement"].items() if k not in ("judge_a", "judge_b")}}
                              for s in out])
        table.to_csv(path / f"rescore_{judge_slug(out[0]['judge'])}.csv", index=False)
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
    if not argv or argv[0].startswith("-"):
        print("usage: emrobust rescore <run dir | sweep dir> [overrides, e.g. eval.judge.model=smollm2_135m]",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    try:
        results = rescore(Path(argv[0]), argv[1:])
    except ConfigError as e:
        print(f"emrobust rescore: {e}", file=sys.stderr)
        return 2
    print(format_summary(results))
    return 0
