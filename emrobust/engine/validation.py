"""Every check of a cell's user input, in one place, before any model loads (`validate`).

1. ranges: each field's declared range (`setting(ge=..., nonempty=...)` in emrobust/config/), on every field
   that is active in the cell (its `when` holds);
2. rules: the constraints between fields declared with the schema (`config.RULES`);
3. data: the files are read and checked (the loaders name file, line and field), the weights are found, and
   every count is checked against what the data holds (`DATA_RULES`): a count beyond it fails, it is never
   capped or wrapped.

The first problem raises `ConfigError(message, where=<field>)`. The stages keep their own checks as a backstop
at run time (e.g. a question expansion that fell short), with the same messages.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .. import config as schema
from .. import generation, judges
from ..core import keys
from ..data import chat, em_datasets, evalsets, inputs, read_yaml
from ..data.prompts import OPENERS, REFLECTION_PROMPTS
from ..errors import ConfigError, Unmet
from ..measures import capability, probe
from ..measures.persona import shares
from ..train import defenses
from ..train.diversity import minilm_dir

log = logging.getLogger("emrobust")


# ---------------------------------------------------------------- 1. ranges, 2. rules
def ranges(cfg: DictConfig) -> None:
    """Each active field's declared range (emrobust/config/)."""
    for path, fld in keys.leaves():
        rng = fld.metadata.get("range")
        if rng is None or not keys.active(cfg, path):
            continue
        value = OmegaConf.select(cfg, path)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        problem = rng.problem(value)
        if problem:
            raise ConfigError(problem, where=path)


def rules(cfg: DictConfig) -> None:
    """The constraints between fields (config.RULES), each when its field is active."""
    for rule in schema.RULES:
        if keys.active(cfg, rule.where):
            problem = rule.problem(cfg)
            if problem:
                raise ConfigError(problem, where=rule.where)


# ---------------------------------------------------------------- 3. the data
class Data:
    """What a cell's checks read, each loaded (and checked by its loader) once, when first needed."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self._inputs: dict[str, list] = {}

    def read(self, where: str) -> list:
        """Input `where` of the cell (emrobust.data.inputs), read once."""
        if where not in self._inputs:
            self._inputs[where] = inputs.read(self.cfg, where)
        return self._inputs[where]

    @property
    def constitution(self):
        return self.read("trait")[0]

    @functools.cached_property
    def reserved(self) -> list[int]:
        """Questions per trait reserved for the persona check (trait.reserved_questions, emrobust/measures/persona.py)."""
        return shares(self.cfg.trait.reserved_questions, len(self.constitution.traits))

    @functools.cached_property
    def per_trait(self) -> list[int]:
        """Questions per trait (after question expansion, counting its target)."""
        target = schema.expansion_target(self.cfg.trait)
        return [max(len(t.questions), target or 0) for t in self.constitution.traits]

    @functools.cached_property
    def pool(self) -> list[int]:
        """Questions per trait the selection draws from: `per_trait` without the reserved questions."""
        return [have - r for have, r in zip(self.per_trait, self.reserved)]

    @property
    def em_rows(self) -> list:
        return self.read("em_dataset")[0]

    @functools.cached_property
    def eval_questions(self) -> list:
        """The eval set after `eval.variants` (not yet cut to max_questions)."""
        return evalsets.select(self.read("eval")[0], OmegaConf.merge(self.cfg.eval, {"max_questions": None}))

    @functools.cached_property
    def general_prompts(self) -> list[str]:
        return chat.read_first_user_turns(self.cfg.distill.general_prompts)

    @functools.cached_property
    def n_layers(self) -> int | None:
        """The base model's number of layers where known without loading it (tiny_random, a local config.json)."""
        b = self.cfg.base_model
        if b.source == "tiny_random":
            return int(b.tiny.num_hidden_layers)
        if b.source == "hub" and b.local_path and (Path(b.local_path) / "config.json").is_file():
            return json.loads((Path(b.local_path) / "config.json").read_text()).get("num_hidden_layers")
        return None


def _persona(cfg) -> bool:
    return cfg.trait.name != "none"


def _selects(cfg) -> bool:
    return _persona(cfg) and cfg.question_diversity.strategy not in ("all", "paraphrase")


def _n_questions(cfg, d: Data) -> str | None:
    qd, total = cfg.question_diversity, sum(d.per_trait)
    if qd.n_questions is not None and qd.n_questions > total:
        return (f"n_questions={qd.n_questions} but trait={cfg.trait.name} has {total} questions"
                + (" (after expansion to trait.expand_to per trait)" if schema.expansion_target(cfg.trait) else ""))
    if qd.per_trait and qd.n_questions is not None:
        share, extra = divmod(qd.n_questions, len(d.per_trait))
        for i, have in enumerate(d.per_trait):
            if have < share + (i < extra):
                return (f"per_trait=true gives trait {i} {share + (i < extra)} of n_questions={qd.n_questions}, "
                        f"but it has {have} questions")
    return None


def _n_clusters(cfg, d: Data) -> str | None:
    qd = cfg.question_diversity
    pool = min(d.pool) if qd.per_trait else sum(d.pool)
    if qd.n_clusters > pool:
        return f"n_clusters={qd.n_clusters} but the selection clusters {pool} questions"
    return None


def _n_seeds(cfg, d: Data) -> str | None:
    qd, total = cfg.question_diversity, sum(d.per_trait)
    return f"n_seeds={qd.n_seeds} but trait={cfg.trait.name} has {total} questions" if qd.n_seeds > total else None


def _reserved(cfg, d: Data) -> str | None:
    """The reservation fits every trait, and leaves the level its n_questions (per trait too, with per_trait)."""
    n, qd = cfg.trait.reserved_questions, cfg.question_diversity
    for i, (t, r) in enumerate(zip(d.constitution.traits, d.reserved)):
        if r > len(t.questions):
            return (f"reserved_questions={n} takes {r} questions of trait {i} of trait={cfg.trait.name}, which has "
                    f"{len(t.questions)}")
    if not _selects(cfg) and qd.strategy != "paraphrase":
        return None
    need = qd.n_seeds if qd.strategy == "paraphrase" else qd.n_questions
    total = sum(d.pool)
    if need is not None and total < need <= sum(d.per_trait):  # beyond the constitution itself: the level's own rule
        what = "n_seeds" if qd.strategy == "paraphrase" else "n_questions"
        return (f"reserved_questions={n} leaves trait={cfg.trait.name} {total} questions to select from, fewer than "
                f"question_diversity.{what}={need} (question_diversity={qd.name})")
    if qd.per_trait and need is not None and qd.strategy != "paraphrase":
        share, extra = divmod(need, len(d.pool))
        for i, (have, whole) in enumerate(zip(d.pool, d.per_trait)):
            if have < share + (i < extra) <= whole:
                return (f"reserved_questions={n} leaves trait {i} {have} questions, fewer than the "
                        f"{share + (i < extra)} question_diversity.per_trait=true takes of n_questions={need}")
    return None


def _persona_questions(cfg, d: Data) -> str | None:
    n, have = cfg.eval.persona.n_questions, cfg.trait.reserved_questions
    if n is not None and n > have:
        return (f"n_questions={n} but trait={cfg.trait.name} reserves {have} questions for the persona check "
                f"(trait.reserved_questions)")
    return None


def _classifying(cfg) -> bool:
    from ..stages.classifier import active  # lazy: slow import

    return active(cfg)


def _classifier_questions(cfg, d: Data) -> str | None:
    n = cfg.eval.persona.classifier.n_questions
    total = sum(len(t.questions) for t in d.constitution.traits)
    left = total - cfg.trait.reserved_questions
    if n is None and left < 4:
        return f"n_questions=null uses every non-reserved question, but trait={cfg.trait.name} has {left} (4 needed)"
    if n is not None and n > left:
        return (f"n_questions={n} but trait={cfg.trait.name} has {left} questions besides its "
                f"{cfg.trait.reserved_questions} reserved ones (of {total}) to train the persona classifier on")
    return None


def _count(where: str, limit: Callable[[Data], int], what: str) -> Callable[[Any, Data], str | None]:
    """A count that must not exceed `limit(data)`; `what` says what holds {have}."""
    field = where.rpartition(".")[2]

    def problem(cfg, d: Data) -> str | None:
        n, have = OmegaConf.select(cfg, where), limit(d)
        return f"{field}={n} but {what.format(have=have)}" if n is not None and n > have else None
    return problem


def _minilm() -> str:
    return minilm_dir()


def _reflection_prompts() -> int:
    return len(REFLECTION_PROMPTS)


def _openers() -> int:
    return len(OPENERS)


def _em_split(cfg, d: Data) -> str | None:
    train, _ = em_datasets.split(d.em_rows, cfg.em_dataset, 0)  # n_examples beyond the rows: ConfigError
    if not train:
        return (f"heldout_fraction={cfg.em_dataset.heldout_fraction} of {cfg.em_dataset.n_examples or len(d.em_rows)} "
                "examples leaves no training example")
    return None


def _layers(section: str) -> Callable[[Any, Data], str | None]:
    def problem(cfg, d: Data) -> str | None:
        layers = OmegaConf.select(cfg, f"{section}.lora.layers_to_transform")
        if layers is None or d.n_layers is None:
            return None
        bad = [x for x in layers if x >= d.n_layers]
        return f"layer {bad[0]} but base_model={cfg.base_model.name} has {d.n_layers} layers" if bad else None
    return problem


def _weights(cfg, d: Data) -> None:
    from ..core import models  # lazy: slow import

    models.validate(cfg.base_model)


def judge(jcfg, where: str = "judge") -> None:
    """Whether the judge can run here: each backend's own check (emrobust.judges.BACKENDS)."""
    judges.validate(jcfg, where)


def _defense(cfg, d: Data) -> None:
    defenses.validate(cfg)  # raises ConfigError naming the defense's field


def _capability(cfg, d: Data) -> None:
    capability.validate(cfg.eval.capability)


def _generators(cfg, d: Data) -> None:
    # lazy: slow import
    from ..core import models
    from ..stages import questions

    generation.validate(cfg.generation)
    judge(cfg.judge)
    if _persona(cfg) and questions.expands(cfg):
        models.validate(questions.generator_config(cfg, cfg.trait.expansion.generator))
    if _persona(cfg) and questions.paraphrases(cfg):
        models.validate(questions.generator_config(cfg, cfg.question_diversity.paraphrase.generator))


@dataclass(frozen=True)
class DataRule:
    """A check against the data, about the field `where`, run when `when(cfg)` holds and the field is active:
    `problem(cfg, data)` says what is wrong or returns None; the loaders it calls raise their own ConfigError
    (naming file and line)."""
    where: str
    problem: Callable[[Any, Data], str | None]
    when: Callable[[Any], bool] = lambda cfg: True


def _probe_prompts() -> int:
    return sum(it.get("split", "a") == "a" for it in read_yaml(probe.BUILTIN))


def _probe(cfg, d: Data) -> str | None:
    probe.load(cfg.eval.probe)  # its own ConfigError names the file, the item and the splits
    return None


DATA_RULES = (
    DataRule("base_model", _weights),
    DataRule("generation", _generators),
    # every file the cell reads (emrobust.data.inputs.INPUTS), resolved and read: one line naming it when it is not
    *(DataRule(i.where, lambda c, d, w=i.where: d.read(w) and None, when=i.when) for i in inputs.INPUTS),
    DataRule("question_diversity.embedder", lambda c, d: _minilm() and None,
             when=lambda c: _persona(c) and c.question_diversity.embedder == "minilm"),
    DataRule("trait.reserved_questions", _reserved, when=_persona),
    DataRule("question_diversity.n_questions", _n_questions, when=_selects),
    DataRule("question_diversity.n_seeds", _n_seeds, when=_persona),
    DataRule("question_diversity.n_clusters", _n_clusters, when=_persona),
    DataRule("distill.n_general_prompts", _count("distill.n_general_prompts", lambda d: len(d.general_prompts),
                                                 "the prompt file has {have} prompts"), when=_persona),
    DataRule("distill.general_prompts", lambda c, d: d.general_prompts and None,
             when=lambda c: _persona(c) and bool(c.distill.general_prompts)),
    DataRule("introspection.reflection_prompts", _count("introspection.reflection_prompts",
                                                        lambda d: _reflection_prompts(),
                                                        "there are {have} built-in reflection prompts"),
             when=_persona),
    DataRule("introspection.interaction_conversations", _count(
        "introspection.interaction_conversations", lambda d: _openers(),
        "there are {have} built-in openers (more would repeat conversations)"),
             when=_persona),
    DataRule("distill.lora.layers_to_transform", _layers("distill"), when=_persona),
    DataRule("introspection.lora.layers_to_transform", _layers("introspection"), when=_persona),
    DataRule("em_train.lora.layers_to_transform", _layers("em_train"), when=lambda c: c.em_dataset.name != "none"),
    DataRule("em_dataset.heldout_fraction", _em_split, when=lambda c: c.em_dataset.name != "none"),
    DataRule("eval.probe", _probe, when=lambda c: c.eval.probe.enabled),
    DataRule("eval.monitor.n_prompts", _count("eval.monitor.n_prompts", lambda d: _probe_prompts(),
                                              "the probe has {have} split-a questions to read directions on"),
             when=lambda c: c.eval.monitor.enabled and not c.eval.probe.path),
    DataRule("defense", _defense, when=lambda c: c.defense.name != "none"),
    DataRule("eval.capability.tasks", _capability, when=lambda c: c.eval.capability.enabled),
    DataRule("eval.max_questions", _count("eval.max_questions", lambda d: len(d.eval_questions),
                                          "the eval set has {have} questions (after eval.variants)")),
    DataRule("eval.persona.n_questions", _persona_questions,
             when=lambda c: _persona(c) and c.eval.persona.n_questions != 0),
    DataRule("eval.persona.classifier.n_questions", _classifier_questions, when=_classifying),
    DataRule("eval.persona.classifier.embedder", lambda c, d: (
        "embedder=tfidf is fitted on the texts it is given: the classifier needs a kept encoder (minilm or a "
        "sentence-transformers path)" if c.eval.persona.classifier.embedder == "tfidf" else
        c.eval.persona.classifier.embedder == "minilm" and _minilm() and None), when=_classifying),
)


def data(cfg: DictConfig, unmet: list | None = None) -> None:
    """The files, the weights, and every count against what the data holds (DATA_RULES). With `unmet`, a rule
    that fails on an `errors.Unmet` (data to fetch, a key, a package) is recorded there, once, and skipped."""
    d = Data(cfg)
    for rule in DATA_RULES:
        if not rule.when(cfg):
            continue
        try:
            active = keys.active(cfg, rule.where)
        except KeyError:  # not a leaf of the schema: a group
            active = True
        if active:
            try:
                problem = rule.problem(cfg, d)
            except Unmet as e:
                if unmet is None:
                    raise
                if not any((u.kind, u.what) == (e.kind, e.what) for u in unmet):
                    unmet.append(e)
                continue
            if problem:
                raise ConfigError(problem, where=rule.where)


def validate(cfg: DictConfig, unmet: list | None = None) -> None:
    """Every check of one cell's input, before any model loads: ranges, rules, data. ConfigError on the first
    problem, naming file/field/value (with `unmet`, see `data`)."""
    ranges(cfg)
    rules(cfg)
    data(cfg, unmet)
