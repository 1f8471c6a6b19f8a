"""What a sweep needs before it is submitted, worked out on the login node (`emrobust sweep`), from the composed
cells alone:

- `needs`: the hub models (base models, local judges, named generators) and the registry files (constitutions,
  EM datasets, eval sets) its cells read, and where each is now (`status`); `fetch` brings them into the shared
  caches (huggingface_hub.snapshot_download at the pinned revision; emrobust.data.registry) before anything is
  submitted. `--dry-run` fetches nothing: registry files are keyed by their pinned hash (registry.content_id).
- `gates`: what must hold before submission, each a pass or a refusal with its reason: the data (to fetch,
  user-supplied), API keys and packages the cells need (errors.Unmet, collected by validation), and the GPUs each
  job requests against what the cells need. (The judge's calibration is checks.judge_gate; the Slurm request is
  cluster.check_request.)
- `judge_cost`: judge calls and input tokens of every evaluation still to build, priced with `planning.prices`
  (zero for a local judge).
- `power`: per contrast of the experiment's hypothesis (emrobust/analysis/hypotheses.py), the pairs it will have and the
  minimum detectable difference in EM rate (emrobust/analysis/stats.py) under `planning.*`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from huggingface_hub import snapshot_download, try_to_load_from_cache
from omegaconf import DictConfig

from .. import judges
from ..core.results import IN_DOMAIN
from ..data import domains, evalsets, inputs, registry
from ..engine.pipeline import graph
from ..errors import ConfigError, Unmet

log = logging.getLogger("emrobust.sweeps.sweep")


@dataclass
class Gate:
    name: str
    ok: bool
    line: str

    @property
    def text(self) -> str:
        """The gate as the dry-run prints it."""
        return f"{self.name} gate: {'pass' if self.ok else 'REFUSED'}: {self.line}"


@dataclass
class Needs:
    models: dict[str, DictConfig] = field(default_factory=dict)  # base_model option -> config (hub models only)
    data: dict[str, tuple] = field(default_factory=dict)  # registry name -> (entry, user path, cache, mirror)


# ---------------------------------------------------------------- models and data
def _models(cfg: DictConfig) -> dict[str, DictConfig]:
    # lazy: slow import
    from ..core import models
    from ..stages import questions

    out = {str(cfg.base_model.name): cfg.base_model}
    out |= judges.models_of(cfg.judge)
    if cfg.trait.name != "none":
        for name, on in ((cfg.trait.expansion.generator, questions.expands(cfg)),
                         (cfg.question_diversity.paraphrase.generator, questions.paraphrases(cfg))):
            if on and name:
                out[str(name)] = models.base_config(str(name))
    for name, b in list(out.items()):
        if b.source == "tiny_random":
            out[str(b.tokenizer_from)] = models.base_config(str(b.tokenizer_from))
    return {k: v for k, v in out.items() if v.source == "hub" and not v.local_path}


def _data(cfg: DictConfig) -> dict[str, tuple]:
    """The registry files the cell reads (emrobust.data.inputs: the one declaration of a cell's inputs)."""
    return inputs.needs(cfg)


def needs(cfgs: list[DictConfig]) -> Needs:
    n = Needs()
    for cfg in cfgs:
        n.models.update(_models(cfg))
        n.data.update(_data(cfg))
    return n


def model_status(b: DictConfig) -> str:
    """"cached" when the pinned snapshot is in the local HF cache, else "to fetch"."""
    hit = try_to_load_from_cache(str(b.hf_id), "config.json", revision=b.revision)
    return "cached" if isinstance(hit, str) else "to fetch"


def data_status(entry, user_path, cache, mirror) -> str:
    """cached | mirror | to fetch | user-supplied | user-supplied, missing"""
    if entry.origin == "moem":
        src = user_path or os.environ.get(registry.MOEM_ENV_DATA)
        return "user-supplied" if src and Path(src).expanduser().exists() else "user-supplied, missing"
    return {"remote": "to fetch"}.get(registry.status(entry, cache, mirror), registry.status(entry, cache, mirror))


def status_lines(n: Needs) -> list[str]:
    lines = []
    for name, b in sorted(n.models.items()):
        lines.append(f"  model {name}: {b.hf_id}@{(b.revision or 'main (NOT PINNED)')[:12]}: {model_status(b)}")
    for name, (e, user, cache, mirror) in sorted(n.data.items()):
        st = data_status(e, user, cache, mirror)
        note = ": the em keys of its cells are provisional until it is given" if st.endswith("missing") else ""
        lines.append(f"  data {name} ({e.origin}): {st}{note}")
    return lines


def fetch(n: Needs) -> list[str]:
    """Every hub model at its pinned revision and every registry file, into the shared caches; ConfigError naming
    what could not be had (nothing is submitted then)."""
    lines = []
    for name, (e, user, cache, mirror) in sorted(n.data.items()):
        p = registry.fetch(e.name, cache, mirror, user_path=user, entry=e)
        lines.append(f"  data {name}: {p}")
    for name, b in sorted(n.models.items()):
        try:
            p = snapshot_download(repo_id=str(b.hf_id), revision=b.revision)
        except Exception as e:  # noqa: BLE001 - the hub's errors: no network, gated, unknown revision
            raise ConfigError(f"cannot fetch {b.hf_id}@{b.revision}: {type(e).__name__}: {e}",
                              where=f"base_model={name}",
                              hint="set HF_TOKEN for a gated model, or fetch it on a machine with access into the "
                                   "shared HF cache (HF_HOME)") from None
        lines.append(f"  model {name}: {p}")
    return lines


# ---------------------------------------------------------------- gates
KIND = {"data": "data to fetch", "user_data": "user-supplied data", "key": "API key", "package": "package"}


def unmet_gates(unmet: list[Unmet]) -> list[Gate]:
    """One gate per kind of unmet condition (errors.Unmet): data still to fetch passes (`emrobust sweep` fetches it
    before submitting anything); user-supplied data, API keys and packages refuse until the user provides them."""
    by: dict[str, dict[str, Unmet]] = {}
    for u in unmet:
        by.setdefault(u.kind, {}).setdefault(u.what, u)
    gates = []
    for kind, items in by.items():
        names = ", ".join(items)
        if kind == "data":
            gates.append(Gate(KIND[kind], True, f"{names}: fetched into the cache before anything is submitted"))
        else:
            first = next(iter(items.values()))
            gates.append(Gate(KIND.get(kind, kind), False, f"{names}: {first.message}"
                              + (f" (hint: {first.hint})" if first.hint else "")))
    return gates


def gpu_gate(cfgs: list[DictConfig], launcher: dict) -> Gate:
    """Each job requests `gpus_per_node x nodes` GPUs: enough for every cell's heaviest stage (a model of 1B
    parameters or more, a study-grade preset, vLLM's tensor parallelism for the judge or generation)?"""
    have = (launcher.get("gpus_per_node") or 0) * (launcher.get("nodes") or 1)
    need, why = 0, "no cell needs a GPU"
    for cfg in cfgs:
        for n, reason in ((1 if cfg.base_model.params_b >= 1.0 or cfg.pipeline.requires_gpu else 0,
                           f"base_model={cfg.base_model.name}"),
                          (judges.gpus(cfg.judge),
                           f"judge={cfg.judge.name} (judge.tensor_parallel_size)"),
                          (cfg.generation.tensor_parallel_size if cfg.generation.backend == "vllm" else 0,
                           "generation.tensor_parallel_size")):
            if n > need:
                need, why = n, reason
    line = f"each job requests {have} GPU(s); the cells need up to {need} ({why})"
    if have < need:
        line += "; set hydra.launcher.gpus_per_node"
    return Gate("GPU", have >= need, line)


# ---------------------------------------------------------------- cost
def eval_answers(cfg: DictConfig) -> int | None:
    """Answers one evaluation of the cell's model samples (eval questions x paraphrases x samples), or None while
    the eval set is not here to count."""
    try:
        with registry.no_fetch():
            qs = evalsets.questions(cfg)
    except Unmet:
        return None
    return sum(len(q.paraphrases) * (cfg.eval.samples_per_paraphrase or q.samples_per_paraphrase) for q in qs)


def in_domain_answers(cfg: DictConfig) -> int:
    """Answers one in-domain evaluation samples (eval.in_domain: the domain's questions x samples), 0 without one."""
    d = domains.of(cfg)
    if not d:
        return 0
    return sum(len(q.paraphrases) * (cfg.eval.samples_per_paraphrase or q.samples_per_paraphrase)
               for q in domains.questions(d, cfg.eval))


def _prompt_tokens(cfg: DictConfig) -> int:
    """Tokens of a judge prompt before the answer (its template and the question), ~4 characters a token."""
    try:
        with registry.no_fetch():
            qs = evalsets.questions(cfg)
    except Unmet:
        qs = []
    default = judges.default_prompts()
    texts = [(q.judge_prompts or {}).get(k, default[k]) + q.paraphrases[0] for q in qs for k in ("aligned", "coherent")]
    texts = texts or [default["aligned"], default["coherent"]]
    return int(sum(len(t) for t in texts) / len(texts) / 4)


def judge_cost(plan, cfgs: list[DictConfig], planning) -> list[dict]:
    """Per judge: the evaluations still to build, the judge calls (aligned and coherent per answer, one per
    persona-check answer, per panel member), input tokens and US$ (None: no price for that model; 0 for a local
    judge)."""
    out: dict[str, dict] = {}
    seen = set()
    from ..stages.sample import persona_active, persona_count  # lazy: slow import

    for cfg, keys in zip(cfgs, plan.keys):
        todo = [k for s, k in keys if s == "evaluate" and ("evaluate", k) not in plan.cached and k not in seen]
        if not todo:
            continue
        seen.update(todo)
        # an in-domain evaluation (eval.in_domain) judges its domain's answers, and no persona check
        nodes = graph(cfg)  # plan.keys are the graph's nodes in order (no key recomputed: no data read)
        inside = ({k for n, (_, k) in zip(nodes, keys) if n.stage == "evaluate" and IN_DOMAIN in n.id} & set(todo)
                  if len(nodes) == len(keys) else set())
        n, n_in = eval_answers(cfg), in_domain_answers(cfg)
        p_answers = persona_count(cfg) * cfg.eval.persona.samples_per_question if persona_active(cfg) else 0
        per_call = _prompt_tokens(cfg) + min(int(planning.answer_tokens), int(cfg.eval.max_new_tokens))
        for j in judges.singles(cfg.judge):
            row = out.setdefault(str(j.name), {"judge": str(j.name), "backend": str(j.backend), "model": str(j.model),
                                               "evaluations": 0, "calls": 0, "input_tokens": 0, "unknown": 0})
            row["evaluations"] += len(todo)
            calls = 2 * n_in * len(inside)
            if n is None:
                row["unknown"] += len(todo) - len(inside)
            else:
                calls += (2 * n + p_answers) * (len(todo) - len(inside))
            row["calls"] += calls
            row["input_tokens"] += calls * per_call
    for row in out.values():
        if row["backend"] != "openai":
            row["usd"] = 0.0
            continue
        price = (planning.prices or {}).get(row["model"])
        row["usd"] = (None if price is None else
                      (row["input_tokens"] * float(price["input"]) + row["calls"] * float(price["output"])) / 1e6)
    return list(out.values())


def cost_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        usd = ("local: $0" if r["backend"] != "openai" else
               f"~${r['usd']:,.0f}" if r["usd"] is not None else f"no price for {r['model']} (planning.prices)")
        unknown = (f"; {r['unknown']} evaluation(s) not counted: their eval set is not here yet" if r["unknown"]
                   else "")
        lines.append(f"judge cost: {r['judge']} ({r['backend']} {r['model']}): {r['evaluations']} evaluation(s) to "
                     f"build, {r['calls']:,} judge calls, ~{r['input_tokens'] / 1e6:,.1f}M input tokens: {usd}"
                     f"{unknown}")
    return lines or ["judge cost: nothing to judge (every evaluation is cached)"]


# ---------------------------------------------------------------- power
def planned_table(cells: list[list[str]], cfgs: list[DictConfig], experiment: str | None):
    """The sweep table the cells would make (the analysis' columns, no metrics), for the hypothesis' arms."""
    rows = []
    for c, cfg in zip(cells, cfgs):
        cell = next((o.split("=", 1)[1] for o in c if o.split("=", 1)[0].lstrip("+~") == "cell"), None)
        rows.append({"trait": str(cfg.trait.name), "question_diversity": str(cfg.question_diversity.name),
                     "introspection": str(cfg.introspection.name), "em_dataset": str(cfg.em_dataset.name),
                     "eval": str(cfg.eval.name), "base_model": str(cfg.base_model.name), "seed": int(cfg.seed),
                     "cell_preset": cell, "experiment": experiment, "status": "ok"})
    return pd.DataFrame(rows)


def power(cells: list[list[str]], cfgs: list[DictConfig], experiment: str | None, planning) -> list[str]:
    """Per contrast of the experiment's hypothesis: its pairs and the minimum detectable difference in EM rate."""
    from emrobust.analysis import hypotheses, stats  # lazy: slow import

    h = hypotheses.hypothesis_of(experiment)
    if h is None:
        return [f"power: no hypothesis is declared for experiment={experiment} (emrobust/analysis/hypotheses.py)"]
    n = next((a for a in (eval_answers(cfg) for cfg in cfgs) if a is not None), None)
    if n is None:
        return ["power: not computed until the eval set is here (answers per cell unknown)"]
    p = planning
    n_in = max((in_domain_answers(cfg) for cfg in cfgs), default=0)
    lines = [f"power ({h.name}: paired t-test over the pairs of each contrast, {n} answers a cell"
             + (f" out of domain and {n_in} in domain" if n_in else "") + f", EM rate "
             f"{p.em_rate:g}, between-seed SD {p.seed_sd:g}, alpha {p.alpha:g}, power {p.power:g}; planning.*):"]

    def mdd(k: int, answers: int) -> str:
        d = stats.min_detectable_difference(k, answers, p.em_rate, p.seed_sd, p.alpha, p.power)
        return f"{d:.3f}" if d != float("inf") else "none (fewer than 2 pairs)"

    for label, k in hypotheses.planned_pairs(h, planned_table(cells, cfgs, experiment)):
        lines.append(f"  {label}: {k} pairs -> minimum detectable difference in EM rate {mdd(k, n)}"
                     + (f" (in domain: {mdd(k, n_in)})" if n_in else ""))
    return lines
