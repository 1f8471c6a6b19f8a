"""Character constitutions: a list of traits, each with the questions that train it.

Formats read as they are:
- our YAML: ``{name, description?, traits: [{trait, questions: [...], notes?}]}``
- OCT hand-written ``.txt``: a JSON list of ``{trait, questions[5], clarification?}``
- OCT few-shot ``.jsonl``: one trait a line: ``{trait, questions, additional_questions}``
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError

BUILTIN = Path(__file__).parent / "builtin" / "constitutions"


@dataclass
class Trait:
    text: str
    questions: list[str]
    clarification: str | None = None


@dataclass
class Constitution:
    name: str
    traits: list[Trait]
    source: str
    description: str = ""
    extra: dict = field(default_factory=dict)

    def questions(self) -> list[tuple[int, str]]:
        """(trait index, question) for every question, in file order."""
        return [(i, q) for i, t in enumerate(self.traits) for q in t.questions]


def _trait(entry, file: str, where: str, keys: tuple[str, ...]) -> Trait:
    if not isinstance(entry, dict):
        raise ConfigError(f"expected an object, got {type(entry).__name__}", file=file, where=where)
    text = entry.get("trait")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("missing or empty field 'trait'", file=file, where=where)
    questions: list[str] = []
    for k in keys:
        qs = entry.get(k, [] if k != keys[0] else None)
        if qs is None:
            raise ConfigError(f"missing field {k!r}", file=file, where=where)
        if not isinstance(qs, list) or not all(isinstance(q, str) and q.strip() for q in qs):
            raise ConfigError(f"field {k!r} must be a list of non-empty strings", file=file, where=where)
        questions += [q.strip() for q in qs]
    clar = entry.get("clarification")
    return Trait(text.strip(), questions, clar if isinstance(clar, str) else None)


def load(path: str | Path, name: str | None = None) -> Constitution:
    """Load a constitution file, detecting the format by extension. Errors name file, entry and field."""
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise ConfigError("constitution file does not exist", file=file)
    text = path.read_text()
    name = name or path.stem
    if path.suffix == ".jsonl":
        traits = []
        for ln, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"invalid JSON: {e.msg}", file=file, where=f"line {ln}") from None
            traits.append(_trait(entry, file, f"line {ln}", ("questions", "additional_questions")))
        fmt = "oct_few_shot"
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", file=file) from None
        if not isinstance(data, dict) or not isinstance(data.get("traits"), list):
            raise ConfigError("expected a mapping with a 'traits' list", file=file)
        traits = [_trait(e, file, f"traits[{i}]", ("questions",)) for i, e in enumerate(data["traits"])]
        name = data.get("name", name)
        fmt = "yaml"
    else:  # OCT hand-written: a JSON list
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e.msg} at line {e.lineno}", file=file) from None
        if not isinstance(data, list):
            raise ConfigError("expected a JSON list of {trait, questions}", file=file)
        traits = [_trait(e, file, f"entry {i}", ("questions",)) for i, e in enumerate(data)]
        fmt = "oct_hand_written"
    if not traits:
        raise ConfigError("constitution has no traits", file=file)
    return Constitution(name=name, traits=traits, source=fmt)


def source(trait_cfg) -> str:
    """`trait.source` (the schema's TraitSource: aliases such as `few_shot` already resolved)."""
    return str(trait_cfg.source)


def oct_persona(trait_cfg) -> str | None:
    """`oct_goodness` -> `goodness` for an OCT source without a user path; None otherwise."""
    if source(trait_cfg) in ("oct_few_shot", "oct_hand_written") and not trait_cfg.path:
        name = str(trait_cfg.name)
        return name[4:] if name.startswith("oct_") else name
    return None


def resolve_path(trait_cfg, paths=None) -> Path:
    """The file a trait config points to: a builtin name, an OCT persona (`trait.name=oct_<persona>` with
    `trait.source=oct_few_shot|oct_hand_written` and no `trait.path`: fetched through the pinned registry into
    `paths.cache`, or copied from the mirror `paths.data_mirror` / $EMROBUST_DATA_MIRROR), or a user path."""
    src = source(trait_cfg)
    if src == "builtin":
        p = BUILTIN / f"{trait_cfg.name}.yaml"
        if not p.exists():
            known = sorted(x.stem for x in BUILTIN.glob("*.yaml"))
            raise ConfigError(f"unknown builtin trait {trait_cfg.name!r}; known: {known}", where="trait.name")
        return p
    persona = oct_persona(trait_cfg)
    if persona is not None:
        from . import registry

        entry = registry.oct_entry(persona, src)
        cache = Path(paths.cache).expanduser() if paths is not None else registry.default_cache()
        mirror = (paths.data_mirror if paths is not None else None) or registry.default_mirror()
        return registry.fetch(entry.name, cache, mirror, entry=entry)
    if not trait_cfg.path:
        raise ConfigError(f"trait.source={trait_cfg.source} needs trait.path", where="trait.path")
    return Path(trait_cfg.path).expanduser()


def load_cfg(trait_cfg, paths=None) -> Constitution:
    """Resolve and load the cell's constitution (validated; errors name file, entry and field)."""
    return load(resolve_path(trait_cfg, paths), name=trait_cfg.name)


def persona_prompt(const: Constitution, template: str, assistant_name: str) -> str:
    traits = "\n".join(f"- {t.text}" for t in const.traits)
    return template.format(name=assistant_name, traits=traits)
