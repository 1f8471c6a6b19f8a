"""The stage graph of a cell, its keys, the run loop and run.json.

    base ─► questions ─► distill ─► [introspect] ─► fold ─► [em] ─► sample ─► evaluate
    base ─► classifier ─► evaluate (a persona cell: the persona classifier, one per persona and base model)
    trait=none: base ─► [em] ─► sample ─► evaluate;  em_dataset=none: fold ─► sample ─► evaluate
    defense.interleave.select=perplexity_gap: start ─► em@reference ─► em (a short undefended EM run, the
    misaligned reference the benign examples are chosen against)
    a persona cell with EM also samples and evaluates its starting model (sample@start, evaluate@start): the
    persona before EM, the same artifacts as the em_dataset=none cell's, shared by every EM dataset.
    eval.in_domain: sample@in_domain ─► evaluate@in_domain beside sample ─► evaluate (and @in_domain@start
    beside @start): the same model on its EM dataset's domain's questions (emrobust/data/domains.py), keyed by
    the domain and its questions, so the starting model's in-domain answers are shared by every dataset of a
    domain and its out-of-domain ones by every dataset.

A node is one use of a stage; its upstream is named by role ("start" = the model EM starts from, "em", "sample",
...). Its key is `emrobust.core.keys.stage_key` of the stage's declared reads, content hashes, the upstream keys by
role, and the seed: nothing is written per stage. `base` is the base model itself (emrobust/stages/base.py: key =
what determines the weights; placed in the model cache, not built in the store).

`run_cell` is plan -> run each node -> summarise, and names no stage: what it asks of a stage is the protocol in
emrobust/stages/__init__.py (seeded, distributed, placed, accepted, recorded, measuring), declared by each module.
"""
from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core import distributed, keys, results, tracking
from ..core.results import IN_DOMAIN, START, heldout_metrics, summary_metrics
from ..core.store import Result, Store
from ..data import domains, inputs
from ..errors import ConfigError, note_failure
from ..measures.persona_classifier import THRESHOLD
from ..stages import ORDER, Context, read_jsonl, spec, stage_seed
from ..train import defenses
from . import leakage, validation

log = logging.getLogger("emrobust")


def stage_module(name: str):
    return importlib.import_module(f"emrobust.stages.{name}")


@dataclass
class Node:
    id: str  # unique in the cell: the stage's name, or e.g. "sample@start"
    stage: str
    upstream: dict[str, str] = field(default_factory=dict)  # role -> node id
    params: dict = field(default_factory=dict)  # the node's own parameters (part of its key), e.g. {"step": 100}
    key: str = ""
    key_config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.id


def eval_steps(cfg: DictConfig) -> list[int]:
    """The EM steps evaluated besides the end of training: `eval.at_steps` and every `eval.every_steps` up to
    `em_train.optim.max_steps` (0 = the starting model)."""
    steps = {int(s) for s in cfg.eval.at_steps}
    every, last = cfg.eval.every_steps, cfg.em_train.optim.max_steps
    if every and last > 0:
        steps |= set(range(int(every), int(last), int(every)))
    return sorted(steps)


def graph(cfg: DictConfig) -> list[Node]:
    """The nodes this cell runs, in order (`base` first), with their upstream nodes by role."""
    from ..stages import classifier, questions, sample  # lazy: slow import

    nodes = [Node("base", "base")]
    monitored = {}
    if cfg.eval.monitor.enabled:
        nodes.append(Node("directions", "directions", {"base": "base"}))
        monitored = {"directions": "directions"}
    classified = {}
    if classifier.active(cfg):  # the persona classifier on the base model (persona_rate of every evaluated model)
        nodes.append(Node("classifier", "classifier", {"base": "base"}))
        classified = {"classifier": "classifier"}
    if cfg.trait.name != "none":
        nodes.append(Node("questions", "questions", {"base": "base"} if questions.uses_cell_base(cfg) else {}))
        nodes.append(Node("distill", "distill", {"questions": "questions", "base": "base"}))
        folded = {"distill": "distill"}
        if cfg.introspection.reflection or cfg.introspection.interaction:
            nodes.append(Node("introspect", "introspect", {"questions": "questions", "distill": "distill",
                                                           "base": "base"}))
            folded["introspect"] = "introspect"
        nodes.append(Node("fold", "fold", folded | {"base": "base"}))
        start = "fold"
    else:
        start = "base"
    persona = ({"questions": "questions"} if sample.persona_active(cfg) else {}) | monitored
    capable = bool(cfg.eval.capability.enabled)

    def capability(suffix: str, model: dict, params: dict | None = None, reference: bool = False) -> list[Node]:
        """The capability node of one evaluated model (lm-eval on it), with the starting model's as `reference`
        (capability retained is paired over the same documents)."""
        if not capable:
            return []
        up = model | ({"reference": "capability" + START} if reference else {})
        return [Node("capability" + suffix, "capability", up, dict(params or {}))]

    def evaluate(suffix: str) -> Node:
        return Node("evaluate" + suffix, "evaluate", {"sample": "sample" + suffix} |
                    ({"capability": "capability" + suffix} if capable else {}) | classified)

    domain = domains.of(cfg)
    in_domain = {"domain": domain, "questions_sha256": inputs.content_id(cfg, "eval.in_domain")} if domain else {}

    def answered_in_domain(suffix: str, model: dict) -> list[Node]:
        """The in-domain answers of one evaluated model and their scores (only the answers: no persona check,
        probe or projection, which the out-of-domain node of the same model has)."""
        if not domain:
            return []
        return [Node(f"sample{IN_DOMAIN}{suffix}", "sample", model, dict(in_domain)),
                Node(f"evaluate{IN_DOMAIN}{suffix}", "evaluate", {"sample": f"sample{IN_DOMAIN}{suffix}"},
                     {"domain": domain})]

    if cfg.em_dataset.name != "none":
        # defense=steer trains along, and defense=early_stop may stop on, a persona direction (emrobust/train/defenses.py)
        reference = {}
        if defenses.selects_by_gap(cfg):  # the misaligned reference the benign examples are chosen against
            nodes.append(Node("em@reference", "em", {"start": start},
                              {"reference_steps": int(cfg.defense.interleave.reference_steps)}))
            reference = {"reference": "em@reference"}
        nodes.append(Node("em", "em", {"start": start} | reference | ({"directions": "directions"}
                                                                      if defenses.uses_directions(cfg) else {})))
        steps = eval_steps(cfg)
        nodes += capability(START, {"start": start})  # the reference of capability retained
        if persona or steps or cfg.eval.probe.enabled:
            # step 0, the model before EM: the same nodes as the em_dataset=none cell's, shared by every EM dataset
            nodes += [Node("sample" + START, "sample", {"start": start} | persona), evaluate(START),
                      *answered_in_domain(START, {"start": start})]
        for s in steps:  # the adapter kept at step s (em_train.checkpoint_every)
            if s > 0:
                nodes += [Node(f"sample@{s}", "sample", {"em": "em", "start": start} | persona, {"step": s}),
                          *capability(f"@{s}", {"em": "em", "start": start}, {"step": s}, reference=True),
                          evaluate(f"@{s}")]
        nodes.append(Node("sample", "sample", {"em": "em", "start": start} | persona))
        nodes += capability("", {"em": "em", "start": start}, reference=True)
        nodes += answered_in_domain("", {"em": "em", "start": start})
    else:
        nodes.append(Node("sample", "sample", {"start": start} | persona))
        nodes += capability("", {"start": start})
        nodes += answered_in_domain("", {"start": start})
    nodes.append(evaluate(""))
    if cfg.pipeline.until:
        until = str(cfg.pipeline.until)
        by_id = {n.id: n for n in nodes}
        if until in by_id:  # that node and everything it needs
            keep, todo = {"base"}, [until]
            while todo:
                nid = todo.pop()
                if nid not in keep:
                    keep.add(nid)
                    todo += list(by_id[nid].upstream.values())
            nodes = [n for n in nodes if n.id in keep]
        else:  # e.g. until=fold on a trait=none cell: stop before the first stage past it
            cut = ORDER.index(until.split("@")[0])
            nodes = [n for n in nodes if n.stage == "base" or ORDER.index(n.stage) <= cut]
    return nodes


def validate(cfg: DictConfig, unmet: list | None = None) -> None:
    """Every user-input check, before any model is loaded (emrobust.engine.validation). Raises ConfigError naming
    file/field/value. With `unmet` (a list), a problem the user solves without changing the config (`errors.Unmet`:
    data still to fetch, an API key to export, a package to install) is appended there instead, the other checks
    still run, and the leakage check, which reads the missing data, is skipped (the sweep planner's dry-run)."""
    found: list = []
    validation.validate(cfg, found if unmet is not None else None)
    if found:
        unmet.extend(found)
        return
    leakage.check_config(cfg)  # no eval question (nor probe item) in the training data known before generation


def require_gpu(cfg: DictConfig, choices: dict | None = None) -> None:
    """A study-grade preset (`pipeline.requires_gpu`) refuses to start where no CUDA GPU is visible: its 7B models
    and OCT-scale counts would run for weeks on a CPU. The preset's `_cpu` twin runs the same arms small."""
    if not cfg.pipeline.requires_gpu:
        return
    import torch  # lazy: slow import

    if str(cfg.pipeline.device) != "cpu" and torch.cuda.is_available():
        return
    exp = (choices or {}).get("experiment")
    twin = f"experiment={exp}_cpu" if exp and not str(exp).endswith("_cpu") else "experiment=<name>_cpu"
    why = "pipeline.device=cpu" if str(cfg.pipeline.device) == "cpu" else "no CUDA GPU is visible here"
    raise ConfigError(f"this is a study-grade preset (base_model={cfg.base_model.name}, OCT-scale character "
                      f"training) and {why}", where="pipeline.requires_gpu",
                      hint=f"run {twin} (the same arms on SmolLM2-135M, minutes on a CPU), or submit it to GPUs: "
                           f"emrobust sweep hydra/launcher=slurm{f' experiment={exp}' if exp else ''}")


def seeded(stage: str, mod) -> bool:
    """Is the cell seed part of this stage's key? Not for a stage declaring `SEEDED = False` (the base model; the
    persona classifier: one instrument per persona and base model, built with a fixed seed)."""
    return spec(mod).seeded


def plan(cfg: DictConfig) -> list[Node]:
    """The cell's nodes with their keys (computing a key never loads a model)."""
    nodes = graph(cfg)
    by_id = {n.id: n for n in nodes}
    for node in nodes:
        mod = stage_module(node.stage)
        node.key_config = keys.key_config(mod, cfg)
        upstream = {role: by_id[u].key for role, u in node.upstream.items()}
        node.key = keys.stage_key(node.stage, mod.VERSION, node.key_config, upstream,
                                  cfg.seed if seeded(node.stage, mod) else None, node.params)
    return nodes


def _classified(nodes: list[Node], paths: dict[str, Path], evaluations: dict[str, dict]) -> dict | None:
    """The persona answers of each evaluated step as classified (1 = the persona) and the base model's, for the
    interval of persona_half_life: {"steps": {step: [...]}, "base": [...]}; None without a classifier."""
    if "classifier" not in paths:
        return None
    steps: dict[int, list[int]] = {}
    for n in nodes:
        step = evaluations.get(n.id, {}).get("em_step")
        f = paths.get(n.id, Path("/nonexistent")) / "persona_answers.jsonl"
        if n.stage == "evaluate" and step is not None and f.exists():
            steps[int(step)] = [int(r["p_persona"] >= THRESHOLD) for r in read_jsonl(f) if "p_persona" in r]
    base = paths["classifier"] / "base_answers.jsonl"
    if not base.exists():
        return None
    return {"steps": steps, "base": [int(r["p_persona"] >= THRESHOLD) for r in read_jsonl(base)]}


def summarise(cfg: DictConfig, nodes: list[Node], paths: dict[str, Path], manifests: dict[str, dict],
              evaluations: dict[str, dict]) -> tuple[dict, list[dict]] | None:
    """The cell's metrics and curve from its evaluations (None when it evaluated nothing): the judge's trust and
    early_stop's control as they stand now (the judge may have been calibrated after the evaluation was built),
    the em stage's held-out measures, and the persona answers as classified (persona_half_life's interval)."""
    if "evaluate" not in evaluations:
        return None
    from ..measures import calibration  # lazy: slow import

    em = manifests.get("em") or {}
    extra = calibration.cell_trust(cfg) | heldout_metrics(em) | defenses.cell_control(cfg)
    return summary_metrics(evaluations, em, OmegaConf.to_container(cfg.eval.curve), extra,
                           _classified(nodes, paths, evaluations), int(cfg.eval.n_bootstrap), int(cfg.seed))


def write_run_json(output_dir: Path, summary: dict) -> None:
    """run.json, replaced whole (a reader never sees half of it; several ranks may write the same content)."""
    tmp = output_dir / f".run.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, output_dir / "run.json")


def _run_node(cfg: DictConfig, node: Node, st, view: DictConfig, store: Store, paths: dict[str, Path],
              manifests: dict[str, dict], screen, dev, summary: dict, output_dir: Path, group: str | None,
              main: bool) -> tuple[Result, float]:
    """One node's artifact from the store, built there if missing (on every rank for a distributed stage; rank 0
    alone holds the lock and writes), and the seconds it took."""
    mod = st.module
    seed = stage_seed(cfg.seed if st.seeded else 0, node.stage)
    ckpt = store.checkpoint_dir(node.stage, node.key)
    upstream = {role: paths[u] for role, u in node.upstream.items()}
    ups = {role: manifests[u] for role, u in node.upstream.items()}

    def build(tmp: Path) -> dict:
        log.info("stage %s: building %s", node.id, node.key)
        from ..train.training import set_seed  # lazy: slow import

        set_seed(seed)
        ctx = Context(view, node.id, node.key, seed, tmp, upstream, ups, dev, ckpt, params=dict(node.params),
                      screen=screen)
        try:
            if not main:  # a rank > 0 trains alongside rank 0; what it writes is discarded
                return mod.run(ctx) or {}
            with tracking.stage_run(cfg, node.id, node.key, output_dir, summary, group) as run:
                extra = mod.run(ctx) or {}
                # a measuring stage is logged with the cell's measured diversity and training data
                logged = extra | ({"diversity": summary["diversity"], "training": summary["training"]}
                                  if st.measures else {})
                tracking.log_stage(run, cfg, tmp, logged, measures=st.measures)
            return extra
        finally:
            # a trainer's model sits in reference cycles (trainer <-> callbacks, accelerator): collect them
            # now, before the next stage loads its own model, not whenever the cyclic GC next runs. What survives
            # is the process's (torch's and transformers' millions of objects) or the cell's: frozen, so the next
            # stage's collection skips it (0.4 s a collection on a tiny cell, most of it re-scanning imports);
            # run_cell unfreezes it at the end
            gc.collect()
            gc.freeze()

    meta = {"node": node.id, "config": node.key_config, "params": node.params,
            "upstream": {role: manifests[u]["key"] for role, u in node.upstream.items()},
            "seed": cfg.seed if st.seeded else None, "stage_seed": seed, "version": mod.VERSION}
    t0 = time.time()
    if main:
        res = store.get_or_build(node.stage, node.key, build, meta,
                                 decided=lambda status: st.distributed and distributed.broadcast(status))
        distributed.barrier()
    else:
        if st.distributed and distributed.broadcast(None) == "build":
            with tempfile.TemporaryDirectory(prefix=f"emrobust-rank{distributed.rank()}-") as scratch:
                build(Path(scratch))
        distributed.barrier()  # rank 0 has renamed the artifact into place
        res = Result(store.path(node.stage, node.key), node.key, "cached", 0.0, store.manifest(node.stage, node.key))
    return res, round(time.time() - t0, 3)


def run_cell(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None,
             choices: dict | None = None, group: str | None = None, checks=None) -> dict:
    """Run one cell of the experiment; always writes `output_dir/run.json`, re-raises on failure.
    `group` names the sweep the cell belongs to (the tracker's group); `checks()`, the caller's checks of the
    input that the config alone cannot show (e.g. the Hydra choices), runs with the validation.

    run.json is written when the cell starts and before each node (status `running`, the node in `current`,
    for `emrobust status`), and at the end (`ok` or `failed`, with the error and, for a runtime failure, the
    node it happened in). The input is validated first, before torch is even imported.

    In a multi-process job (several Slurm tasks, torchrun) every rank calls this; rank 0 alone decides, holds
    the artifact lock and writes (artifacts, run.json, tracker); see emrobust.core.distributed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"overrides": list(overrides or []), "choices": dict(choices or {}), "seed": cfg.seed,
                     "status": "running", "error": None, "stages": [], "diversity": {}, "training": {},
                     "metrics": {}, "world_size": None, "started": time.time(), "host": socket.gethostname(),
                     "pid": os.getpid(), "current": None}
    main = True  # until the process group says otherwise (a bad input: every rank writes the same run.json)
    try:
        if checks is not None:
            checks()
        require_gpu(cfg, choices)  # where the cell may run, before what it asks for
        validate(cfg)
        from ..core import models  # lazy: slow import

        distributed.setup()
        main = distributed.is_main()
        summary["world_size"] = distributed.world_size()
        nodes = plan(cfg)
        planned = {n.stage for n in nodes}
        summary["stages"] = [{"name": s, "key": None, "status": "skipped", "seconds": 0.0, "artifact": None}
                             for s in ORDER if s not in planned]
        store = Store(cfg.paths.artifacts, cfg.pipeline.on_damage)
        summary["artifacts"] = str(store.root)
        dev = models.device(cfg.pipeline.device)
        paths: dict[str, Path] = {}
        manifests: dict[str, dict] = {}
        evaluations: dict[str, dict] = {}
        screen = leakage.screener(leakage.eval_questions(cfg))
        for node in nodes:
            st = spec(stage_module(node.stage))
            view = keys.view(cfg, st.module)
            summary["current"] = {"node": node.id, "key": node.key, "started": time.time()}
            if main:
                write_run_json(output_dir, summary)
            if st.place is not None:  # not built in the store (the base model: into the model cache, once)
                paths[node.id] = Path(distributed.rank0_compute(lambda st=st, view=view: str(st.place(view))))
                manifests[node.id] = {"stage": node.stage, "key": node.key, "config": node.key_config}
                continue
            res, seconds = _run_node(cfg, node, st, view, store, paths, manifests, screen, dev, summary, output_dir,
                                     group, main)
            paths[node.id], manifests[node.id] = res.path, res.manifest
            if st.accept is not None:  # the cell's checks of the artifact, built or reused (eval set, drop share)
                st.accept(view, res.path, res.manifest.get("data", {}), screen)
            st.record(view, node.id, res.manifest, summary)
            if st.measures:
                evaluations[node.id] = res.manifest.get("metrics", {})
            summary["stages"].append({"name": node.id, "key": node.key, "status": res.status,
                                      "seconds": seconds, "artifact": str(res.path)}
                                     | ({"damaged": res.damaged} if res.damaged else {}))
            log.info("stage %s: %s in %.1fs", node.id, res.status, seconds)
        rank = {stage: i for i, stage in enumerate(ORDER)}  # a stage the order does not list goes last
        summary["stages"].sort(key=lambda s: rank.get(s["name"].split("@")[0], len(ORDER)))
        summarised = summarise(cfg, nodes, paths, manifests, evaluations)
        if summarised is not None:
            summary["metrics"], summary["curve"] = summarised
        summary["status"], summary["current"] = "ok", None
    except BaseException as e:
        summary["status"] = "failed"
        summary["error"] = f"{type(e).__name__}: {e}"
        summary["traceback"] = traceback.format_exc()
        if summary["current"] is not None and not isinstance(e, ConfigError):
            summary["failed_stage"] = summary["current"]["node"]
            note_failure(e, stage=summary["failed_stage"], run_json=str(output_dir / "run.json"))
        raise
    finally:
        gc.unfreeze()  # what the stages froze (build) is the cyclic collector's again
        summary["seconds"] = round(time.time() - summary["started"], 3)
        if main:
            write_run_json(output_dir, summary)
    return summary


def run_job(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None, choices: dict | None = None,
            group: str | None = None, sweep_dir: Path | None = None, checks=None) -> dict:
    """One cell as every path runs it (`emrobust <overrides>`, `-m` here or on Slurm, and `emrobust sweep`'s Slurm
    jobs): `run_cell`, its metrics printed, and, for a cell of a sweep, the sweep's sweep.csv rewritten by rank 0
    whether the cell succeeded or not."""
    try:
        summary = run_cell(cfg, output_dir, overrides, choices, group, checks)
        print(results.format_metrics(summary))
        return summary
    finally:
        if sweep_dir is not None and distributed.is_main():
            results.write_sweep_csv(Path(sweep_dir))
