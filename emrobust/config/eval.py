"""`eval=<preset>` (conf/eval/): the question set, the sampling of the answers, and every measure of an evaluated
model (persona check and classifier, probe, monitor, capability, the steps along EM training)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from ..data import domains, evalsets
from ..data.evalsets import Variant  # eval.variants' choices, with the eval sets that ask them
from .schema import DataSource, Rule, setting


@dataclass
class PersonaClassifierConfig:
    """The persona classifier (emrobust/measures/persona_classifier.py, the `classifier` stage): the base model answers
    non-reserved constitution questions with the persona's system prompt (positive) and without (negative); a kept
    sentence encoder and a logistic regression tell them apart. One instrument per (persona, base model): its key
    holds no seed. `min_auroc` is read by `evaluate` only (the validity flag), never by the classifier stage."""
    enabled: bool = True
    # non-reserved constitution questions answered both ways (None = every one)
    n_questions: Optional[int] = setting(None, ge=4, when=lambda c: c.enabled)
    heldout_fraction: float = setting(0.3, gt=0, lt=1, when=lambda c: c.enabled)  # questions held out for F1/AUROC
    embedder: str = setting("minilm", when=lambda c: c.enabled)  # minilm, or a sentence-transformers model path
    C: float = setting(1.0, gt=0, when=lambda c: c.enabled)  # inverse L2 strength of the logistic regression
    # valid when the lower 95% bootstrap bound of the held-out AUROC is at least this; an invalid classifier's
    # numbers are recorded and flagged, and nothing (persona_half_life) is computed from them
    min_auroc: float = setting(0.8, ge=0, le=1, when=lambda c: c.enabled)


@dataclass
class PersonaCheckConfig:
    """Trait-expression score (emrobust/measures/persona.py), before EM (fold model) and on the evaluated model, on the
    trait's reserved questions (`trait.reserved_questions`): the same questions for every arm of the trait."""
    # the first N reserved questions (None = all of them)
    n_questions: Optional[int] = setting(None, ge=1, also={0: "no persona check"})
    samples_per_question: int = setting(1, ge=1)
    temperature: float = setting(0.7, ge=0)
    top_p: float = setting(0.95, gt=0, le=1)
    max_new_tokens: int = setting(300, ge=1)
    classifier: PersonaClassifierConfig = setting(factory=PersonaClassifierConfig)


@dataclass
class ProbeConfig:
    """The judge-free probe (emrobust/measures/probe.py): per-token log-probability of a misaligned minus an aligned answer
    to the same question, on items written by this team (emrobust/data/builtin/probe/probe.yaml)."""
    enabled: bool = True
    path: Optional[str] = setting(None, location="the probe set's sha256 is in the sample key")  # None = built-in
    splits: list[str] = setting(factory=lambda: ["a", "b"], nonempty=True)  # which item splits report (a defense may steer on one)
    # at most this many items of each theme, the first in file order (None = all): every theme stays, fewer items
    # (the CPU demo and the `_cpu` twins read 1 a theme: 21 of split b's 54 items, a third of the forward passes)
    per_theme: Optional[int] = setting(None, ge=1)
    batch_size: int = setting(8, ge=1, execution="answers per forward pass; the same log-probabilities up to float "
                                           "rounding")


@dataclass
class MonitorConfig:
    """Persona directions (emrobust/measures/monitor.py, persona vectors as Chen et al. 2025, read with the
    steering-vectors library): per trait the mean difference of residual-stream activations at one layer between
    answers written under the trait's constitution and under a neutral one; the evaluated model's activations on
    held-out prompts are projected on each direction at every evaluated step."""
    enabled: bool = False
    layer_fraction: float = setting(0.5, ge=0, le=1)  # the layer: round(layer_fraction * (num_hidden_layers - 1))
    n_prompts: int = setting(24, ge=1, when=lambda m: m.enabled)  # prompts answered under each system prompt
    max_new_tokens: int = setting(64, ge=1, when=lambda m: m.enabled)
    temperature: float = setting(0.7, ge=0, when=lambda m: m.enabled)
    # OCT constitutions whose directions are read besides the cell's own trait
    traits: list[str] = setting(factory=lambda: ["oct_misalignment"], when=lambda m: m.enabled)


@dataclass
class CapabilityConfig:
    """General capability of every evaluated model (emrobust/measures/capability.py, the `capability` stage): lm-eval
    (lm-evaluation-harness) tasks scored on the model in memory. A task is one of ours (a YAML of
    emrobust/data/builtin/capability/, local data, offline) or any lm-eval task by name (its data from the hub)."""
    enabled: bool = True
    tasks: list[str] = setting(factory=lambda: ["emrobust_general_mc"], when=lambda c: c.enabled)
    num_fewshot: Optional[int] = setting(None, when=lambda c: c.enabled)  # None = each task's own
    limit: Optional[int] = setting(None, when=lambda c: c.enabled)  # the first N documents of each task (None = all)
    batch_size: int = setting(8, execution="requests per forward pass; the same log-likelihoods up to float "
                                           "rounding")


@dataclass
class CurveConfig:
    """How run.json summarises the metrics along EM steps (no stage reads it)."""
    metric: str = setting("em_rate_mo", execution="how the curve is summarised in run.json, not what is built")
    threshold: float = setting(0.05, execution="how the curve is summarised in run.json, not what is built")
    # the rule of `task_converged_step` (emrobust.core.results.task_convergence): within this share of its whole drop
    converged_within: float = setting(0.1, execution="how the curve is summarised in run.json, not what is built",
                                      gt=0, lt=1)


@dataclass
class EvalConfig:
    name: str = setting(MISSING, location="selects a builtin or registry question set, whose sha256 is in the "
                                          "sample key")
    # builtin | registry (pinned published sets) | path
    source: DataSource = setting(DataSource.builtin, location="where the question set is read from; its sha256 "
                                                             "is in the sample key")
    path: Optional[str] = setting(None, location="the question set's sha256 is in the sample key")
    # first_plot: any of plain, json, template (None = all the set has); `context` adds each plain question in the
    # EM dataset's own form (its domain's template)
    variants: Optional[list[Variant]] = setting(None, nonempty=True)
    samples_per_paraphrase: Optional[int] = setting(None, ge=1)  # None = the YAML's own value
    max_questions: Optional[int] = setting(None, ge=1)  # the first N (None = all)
    # the answers are sampled as Betley et al. sample them (every eval preset): temperature 1, top_p 1, 600 tokens
    temperature: float = setting(1.0, ge=0)
    top_p: float = setting(1.0, gt=0, le=1)
    max_new_tokens: int = setting(600, ge=1)
    n_bootstrap: int = setting(10_000, ge=1)  # resamples for the bootstrap intervals
    persona: PersonaCheckConfig = setting(factory=PersonaCheckConfig)
    probe: ProbeConfig = setting(factory=ProbeConfig)
    monitor: MonitorConfig = setting(factory=MonitorConfig)
    capability: CapabilityConfig = setting(factory=CapabilityConfig)
    # evaluate along EM training: these steps (on the em_train.checkpoint_every grid; 0 = the starting model) and
    # every `every_steps` steps (needs em_train.optim.max_steps); the final model is always evaluated
    at_steps: list[int] = setting(factory=list, execution="which EM steps are evaluated (nodes of the graph), "
                                                          "not what any of them builds")
    every_steps: Optional[int] = setting(None, ge=1, execution="which EM steps are evaluated (nodes of the graph), "
                                                         "not what any of them builds")
    curve: CurveConfig = setting(factory=CurveConfig)
    # in-domain questions beside the eval set (emrobust/data/domains.py): true = the EM dataset's domain
    # (em_dataset.domain), or a domain's name (code, medical, financial, sports, chat); None/false = none
    in_domain: Optional[str] = setting(None, execution="which in-domain nodes the graph has (their domain and "
                                                       "question set's sha256 are in their keys), not what the "
                                                       "other nodes build")


def _steps(c, steps: list[int]) -> str | None:
    """Steps to evaluate along EM training: on the em_train.checkpoint_every grid, within training, EM trained."""
    steps = [x for x in steps if x != 0]  # 0 is the starting model, always available
    if not steps:
        return None
    if any(x < 0 for x in steps):
        return f"steps {steps} must be >= 0"
    if c.em_dataset.name == "none" or c.em_control.name != "none":
        return "steps along EM training need EM training (an em_dataset, em_control=none)"
    every, last = c.em_train.checkpoint_every, c.em_train.optim.max_steps
    if not every:
        return f"steps {steps} need em_train.checkpoint_every (the adapters kept along training)"
    off = [x for x in steps if x % every]
    if off:
        return f"steps {off} are not on the em_train.checkpoint_every={every} grid"
    if last > 0 and any(x > last for x in steps):
        return f"steps {[x for x in steps if x > last]} are past em_train.optim.max_steps={last}"
    return None


def _in_domain(c) -> str | None:
    return domains.problem(c)


def _context(c) -> str | None:
    if c.eval.variants is None or "context" not in [str(v) for v in c.eval.variants]:
        return None
    return evalsets.context_problem(c.em_dataset)


RULES = (
    Rule("eval.in_domain", _in_domain),
    Rule("eval.variants", _context),
    Rule("eval.at_steps", lambda c: _steps(c, [int(x) for x in c.eval.at_steps])),
    Rule("eval.every_steps", lambda c: (
        "eval.every_steps needs em_train.optim.max_steps (the end of training, to enumerate the steps)"
        if c.eval.every_steps and c.em_train.optim.max_steps <= 0 else _steps(c, [int(c.eval.every_steps)])
        if c.eval.every_steps else None)),
)
