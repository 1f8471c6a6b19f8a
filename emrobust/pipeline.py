"""The stage graph: which stages a cell needs, their keys, the run loop, run.json and sweep.csv.

    questions ─► distill ─► [introspect] ─► fold ─► [em] ─► evaluate
    trait=none: base model ─► [em] ─► evaluate;  em_dataset=none: fold ─► evaluate

A stage key = hash(stage, code version, the stage's own resolved config subtree, upstream keys, seed).
"""
from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from . import generation, judges, models, tracking
from .data import constitutions, em_datasets, evalsets
from .errors import ConfigError
from .stages import ORDER, Context, stage_seed
from .store import Result, Store, stable_hash

log = logging.getLogger("emrobust")
INTROSPECTION_MODES = ("none", "reflection", "interaction", "full")


def stage_module(name: str):
    return importlib.import_module(f"emrobust.stages.{name}")


@dataclass
class Node:
    name: str
    upstream: list[str]
    key: str = ""
    key_config: dict = field(default_factory=dict)


def graph(cfg: DictConfig) -> list[Node]:
    """The stages this cell runs, in order, with their upstream stages."""
    nodes: list[Node] = []
    model_from: list[str] = []
    if cfg.trait.name != "none":
        nodes += [Node("questions", []), Node("distill", ["questions"])]
        folded = ["distill"]
        if cfg.introspection.reflection or cfg.introspection.interaction:
            nodes.append(Node("introspect", ["distill"]))
            folded.append("introspect")
        nodes.append(Node("fold", folded))
        model_from = ["fold"]
    if cfg.em_dataset.name != "none":
        nodes.append(Node("em", model_from))
        model_from = ["em"]
    nodes.append(Node("evaluate", model_from))
    if cfg.pipeline.until:
        names = [n.name for n in nodes]
        if cfg.pipeline.until in names:
            nodes = nodes[: names.index(cfg.pipeline.until) + 1]
        else:  # e.g. until=fold on a trait=none cell: stop before the first stage past it in ORDER
            cut = ORDER.index(cfg.pipeline.until)
            nodes = [n for n in nodes if ORDER.index(n.name) <= cut]
    return nodes


def validate(cfg: DictConfig) -> None:
    """Every user-input check, before any model is loaded. Raises ConfigError naming file/field/value."""
    models.validate(cfg.base_model)
    judges.validate(cfg.eval.judge)
    generation.validate(cfg.generation)
    if cfg.pipeline.until is not None and cfg.pipeline.until not in ORDER:
        raise ConfigError(f"pipeline.until={cfg.pipeline.until!r}; stages: {list(ORDER)}", where="pipeline.until")
    if cfg.introspection.name not in INTROSPECTION_MODES:
        raise ConfigError(f"introspection={cfg.introspection.name!r}; known: {INTROSPECTION_MODES}")
    if cfg.trait.name != "none":
        constitutions.load_cfg(cfg.trait, cfg.paths)
        stage_module("questions").validate(cfg)
        stage_module("distill").validate(cfg)
        from .diversity import STRATEGIES

        qd = cfg.question_diversity
        if qd.strategy not in STRATEGIES:
            raise ConfigError(f"question_diversity.strategy={qd.strategy!r}; known: {STRATEGIES}")
        if qd.total_pairs is not None and qd.n_questions is not None and qd.total_pairs < qd.n_questions:
            raise ConfigError(f"total_pairs={qd.total_pairs} < n_questions={qd.n_questions}: some selected questions "
                              "would get no training pair", where="question_diversity.total_pairs")
    stage_module("em").validate(cfg)
    if cfg.em_dataset.name != "none":
        em_datasets.split(em_datasets.load_all(cfg.em_dataset, cfg.paths), cfg.em_dataset, 0)
    evalsets.questions(cfg)


def plan(cfg: DictConfig) -> list[Node]:
    """The cell's stages with their keys (computing a key never loads a model)."""
    base_key = stable_hash(OmegaConf.to_container(cfg.base_model, resolve=True))
    keys: dict[str, str] = {}
    nodes = graph(cfg)
    for node in nodes:
        mod = stage_module(node.name)
        node.key_config = mod.key_config(cfg)
        upstream = {u: keys[u] for u in node.upstream}
        if node.name != "questions":
            upstream["base_model"] = base_key
        node.key = stable_hash(
            {"stage": node.name, "version": mod.VERSION, "config": node.key_config, "upstream": upstream,
             "seed": cfg.seed})
        keys[node.name] = node.key
    return nodes


def run_cell(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None,
             choices: dict | None = None, group: str | None = None) -> dict:
    """Run one cell of the experiment; always writes `output_dir/run.json`, re-raises on failure.
    `group` names the sweep the cell belongs to (the tracker's group).

    In a multi-process job (several Slurm tasks, torchrun) every rank calls this; rank 0 alone decides, holds
    the artifact lock and writes (artifacts, run.json, tracker); see emrobust.distributed."""
    from . import distributed

    distributed.setup()
    main = distributed.is_main()
    output_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"overrides": list(overrides or []), "choices": dict(choices or {}), "seed": cfg.seed,
                     "status": "failed", "error": None, "stages": [], "diversity": {}, "metrics": {},
                     "world_size": distributed.world_size()}
    try:
        validate(cfg)
        nodes = plan(cfg)
        planned = {n.name for n in nodes}
        summary["stages"] = [{"name": s, "key": None, "status": "skipped", "seconds": 0.0, "artifact": None}
                             for s in ORDER if s not in planned]
        store = Store(Path(cfg.paths.artifacts))
        dev = models.device(cfg.pipeline.device)
        base = distributed.rank0_compute(lambda: str(models.prepare(cfg.base_model, cfg.paths.cache)))
        inputs: dict[str, Path] = {"base": Path(base)}
        manifests: dict[str, dict] = {}
        for node in nodes:
            mod = stage_module(node.name)
            seed = stage_seed(cfg.seed, node.name)
            ckpt = store.checkpoint_dir(node.name, node.key)

            def build(tmp: Path, node=node, mod=mod, seed=seed, ckpt=ckpt) -> dict:
                log.info("stage %s: building %s", node.name, node.key)
                from .training import set_seed

                set_seed(seed)
                ctx = Context(cfg, node.name, node.key, seed, tmp, dict(inputs), dict(manifests), dev, ckpt)
                if not main:  # a rank > 0 trains alongside rank 0; what it writes is discarded
                    return mod.run(ctx) or {}
                with tracking.stage_run(cfg, node.name, node.key, output_dir, summary, group) as run:
                    extra = mod.run(ctx) or {}
                    logged = dict(extra)
                    if node.name == "evaluate" and "questions" in manifests:  # the cell's measured diversity too
                        logged["diversity"] = manifests["questions"].get("diversity", {})
                    tracking.log_stage(run, cfg, node.name, tmp, logged)
                return extra

            meta = {"config": node.key_config, "upstream": {u: manifests[u]["key"] for u in node.upstream},
                    "seed": cfg.seed, "stage_seed": seed, "version": mod.VERSION}
            t0 = time.time()
            if main:
                joins = getattr(mod, "DISTRIBUTED", False)
                res = store.get_or_build(node.name, node.key, build, meta,
                                         decided=lambda st, joins=joins: joins and distributed.broadcast(st))
                distributed.barrier()
            else:
                if getattr(mod, "DISTRIBUTED", False) and distributed.broadcast(None) == "build":
                    import tempfile

                    with tempfile.TemporaryDirectory(prefix=f"emrobust-rank{distributed.rank()}-") as scratch:
                        build(Path(scratch))
                distributed.barrier()  # rank 0 has renamed the artifact into place
                res = Result(store.path(node.name, node.key), node.key, "cached", 0.0,
                             store.manifest(node.name, node.key))
            inputs[node.name], manifests[node.name] = res.path, res.manifest
            summary["stages"].append({"name": node.name, "key": node.key, "status": res.status,
                                      "seconds": round(time.time() - t0, 3), "artifact": str(res.path)})
            log.info("stage %s: %s in %.1fs", node.name, res.status, time.time() - t0)
        summary["stages"].sort(key=lambda s: ORDER.index(s["name"]))
        if "questions" in manifests:
            summary["diversity"] = manifests["questions"].get("diversity", {})
        if "evaluate" in manifests:
            summary["metrics"] = manifests["evaluate"].get("metrics", {})
        summary["status"] = "ok"
    except BaseException as e:
        summary["error"] = f"{type(e).__name__}: {e}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        if main:
            (output_dir / "run.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def record_failure(output_dir: Path, overrides: list[str], error: str) -> None:
    """run.json for a cell that died without writing one (its Slurm job was killed or cancelled)."""
    output_dir = Path(output_dir)
    if (output_dir / "run.json").exists():
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "seed"), None)
    summary = {"overrides": list(overrides), "choices": {}, "seed": int(seed) if seed is not None else None,
               "status": "failed", "error": error, "stages": [], "diversity": {}, "metrics": {}}
    (output_dir / "run.json").write_text(json.dumps(summary, indent=2))


# ---------------------------------------------------------------- sweep table
def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per cell: overrides as columns, then status, diversity and metrics."""
    rows = [cell_row(rj.parent.name, json.loads(rj.read_text()))
            for rj in sorted(Path(sweep_dir).glob("*/run.json"), key=lambda p: (len(p.parent.name), p.parent.name))]
    return pd.DataFrame(rows)


def cell_row(cell: str, run: dict) -> dict:
    """The sweep-table row of one cell from its run.json dict (or the same dict rebuilt from W&B runs by
    analysis/wandb_source.py): the one row schema of sweep.csv and `emrobust analyze`."""
    row = {"cell": cell}
    row |= {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in run["overrides"] if "=" in o}
    row |= {k: v for k, v in run.get("choices", {}).items() if k not in row}
    row |= {"seed": run.get("seed"), "status": run["status"], "error": run.get("error")}
    row |= {"executed": sum(s["status"] == "executed" for s in run["stages"]),
            "cached": sum(s["status"] == "cached" for s in run["stages"])}
    row |= {f"div_{k}" if not k.startswith("div_") else k: v for k, v in run.get("diversity", {}).items()
            if not isinstance(v, (dict, list))}
    row |= {k: v for k, v in run.get("metrics", {}).items() if not isinstance(v, (dict, list))}
    return row


def write_sweep_csv(sweep_dir: Path) -> Path:
    sweep_dir = Path(sweep_dir)
    with FileLock(str(sweep_dir / ".sweep.lock")):
        out = sweep_dir / "sweep.csv"
        tmp = sweep_dir / ".sweep.csv.tmp"
        sweep_table(sweep_dir).to_csv(tmp, index=False)
        tmp.replace(out)
    return out


def format_metrics(summary: dict) -> str:
    m = summary.get("metrics", {})
    lines = [f"status: {summary['status']}"]
    for s in summary["stages"]:
        lines.append(f"  {s['name']:<11} {s['status']:<9} {s['seconds']:>8.1f}s")
    for k in ("em_rate_betley", "em_rate_mo", "mean_aligned", "p05_aligned", "cvar05_aligned", "coherent_rate",
              "none_rate", "worst_question_em_rate"):
        if k in m:
            lines.append(f"  {k:<16} {m[k]:.3f}  [{m.get(k + '_lo', float('nan')):.3f}, {m.get(k + '_hi', float('nan')):.3f}]")
    for k in ("worst_question", "n_answers", "judge"):
        if k in m:
            lines.append(f"  {k:<16} {m[k]}")
    return "\n".join(lines)
