"""Character constitutions: a list of traits, each with the questions that train it.

Formats read as they are:
- our YAML: ``{name, description?, traits: [{trait, questions: [...], notes?}]}``
- OCT hand-written ``.txt``: a JSON list of ``{trait, questions[5], clarification?}``
- OCT few-shot ``.jsonl``: one trait a line: ``{trait, questions, additional_questions}``

``trait.source=mixture`` assembles a constitution from traits of others: ``trait.mixture=[oct_sarcasm:9,
oct_loving:3, ...]``, each piece ``<constitution>:<trait index>`` (an OCT persona ``oct_<persona>``, a builtin
constitution, or a file path), in that order, each trait with its own questions. Its identity (``content_sha256``)
is the pieces' content, their files' sha256 and trait indices, never the names they were given by.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from ..errors import ConfigError
from . import registry, sources

BUILTIN = sources.BUILTIN / "constitutions"


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


def _kind_source(trait_cfg) -> str:
    """A trait's source as the shared resolver reads it: an OCT persona without a user path is a registry file."""
    src = source(trait_cfg)
    if src == MIXTURE:
        raise ConfigError("a mixture has no single file: load it with load_cfg (its pieces: trait.mixture)",
                          where="trait.source")
    if src == "builtin":
        return src
    return "registry" if oct_persona(trait_cfg) is not None else "path"  # yaml, or an OCT format at trait.path


def _entry(trait_cfg, where: str = "trait"):
    return registry.oct_entry(oct_persona(trait_cfg), source(trait_cfg))


def load_cfg(trait_cfg, paths=None, where: str = "trait") -> Constitution:
    """Resolve and load the cell's constitution (validated; errors name file, entry and field)."""
    if source(trait_cfg) == MIXTURE:
        traits = []
        for k, (piece, i) in enumerate(mixture_pieces(trait_cfg)):
            const = load_cfg(named(piece), paths)
            if i >= len(const.traits):
                raise ConfigError(f"{piece!r} has {len(const.traits)} traits (indices 0..{len(const.traits) - 1}), "
                                  f"not {i}", where=f"{where}.mixture[{k}]")
            traits.append(const.traits[i])
        return Constitution(name=str(trait_cfg.name), traits=traits, source=MIXTURE,
                            extra={"pieces": [f"{piece}:{i}" for piece, i in mixture_pieces(trait_cfg)]})
    return load(KIND.path(trait_cfg, paths, where), name=trait_cfg.name)


def content_sha256(trait_cfg, paths=None, where: str = "trait") -> str:
    """The identity of a trait's constitution for stage keys: an OCT persona's pinned sha256 (nothing read or
    fetched), a mixture's pieces (each piece's constitution identity and trait index, in order), else the sha256
    of the file."""
    if source(trait_cfg) == MIXTURE:
        pieces = [{"constitution": content_sha256(named(p), paths), "trait": i} for p, i in mixture_pieces(trait_cfg)]
        return hashlib.sha256(json.dumps(pieces, sort_keys=True).encode()).hexdigest()
    return KIND.content_id(trait_cfg, paths, where)


def needs(trait_cfg, paths, where: str = "trait") -> dict[str, tuple]:
    """The registry files a trait reads (a mixture: its pieces'), for the planner (emrobust.sweeps.preflight)."""
    if source(trait_cfg) == MIXTURE:
        return {k: v for piece, _ in mixture_pieces(trait_cfg) for k, v in needs(named(piece), paths).items()}
    return KIND.needs(trait_cfg, paths, where)


# ---------------------------------------------------------------- mixtures
MIXTURE = "mixture"


def named(name: str):
    """The trait config of a constitution given by name: `oct_<persona>` (OCT's few-shot file, as
    `trait=oct_<persona>`), a builtin constitution, or a path to a constitution file (any format above)."""
    if "/" in name or name.endswith((".yaml", ".yml", ".jsonl", ".txt", ".json")):
        path = Path(name).expanduser()
        src = {".jsonl": "oct_few_shot", ".yaml": "yaml", ".yml": "yaml"}.get(path.suffix, "oct_hand_written")
        return OmegaConf.create({"name": path.stem, "source": src, "path": str(path)})
    return OmegaConf.create({"name": name, "source": "oct_few_shot" if name.startswith("oct_") else "builtin",
                             "path": None})


def mixture_pieces(trait_cfg) -> list[tuple[str, int]]:
    """`trait.mixture` as (constitution, trait index) pairs; ConfigError naming the piece at fault."""
    raw = list(trait_cfg.get("mixture") or [])
    if len(raw) < 2:
        raise ConfigError(f"trait.source=mixture needs at least two pieces <constitution>:<trait index>, got {raw}",
                          where="trait.mixture")
    out: list[tuple[str, int]] = []
    for k, piece in enumerate(raw):
        name, sep, idx = str(piece).rpartition(":")
        name = name.strip()
        if not sep or not name or not idx.strip().isdigit():
            raise ConfigError(f"{piece!r} is not <constitution>:<trait index> (e.g. oct_sarcasm:0)",
                              where=f"trait.mixture[{k}]")
        if name in (MIXTURE, "none"):
            raise ConfigError(f"{piece!r}: a piece is a constitution, not {name!r}", where=f"trait.mixture[{k}]")
        if (name, int(idx)) in out:
            raise ConfigError(f"{piece!r} is listed twice", where=f"trait.mixture[{k}]")
        out.append((name, int(idx)))
    return out


def persona_prompt(const: Constitution, template: str, assistant_name: str) -> str:
    traits = "\n".join(f"- {t.text}" for t in const.traits)
    return template.format(name=assistant_name, traits=traits)


KIND = sources.Kind("trait", BUILTIN, ".yaml", _entry, load, source=_kind_source)
# the `trait` input (emrobust.data.inputs): one constitution file through KIND, or a mixture's pieces
SOURCE = sources.Source(load_cfg, content_sha256, needs)


def monitored_traits(cfg) -> list[str]:
    """The traits whose directions the cell reads (the directions stage, the monitor): the cell's own (if any) and
    eval.monitor.traits, in order."""
    own = [str(cfg.trait.name)] if cfg.trait.name != "none" else []
    return list(dict.fromkeys(own + [str(t) for t in cfg.eval.monitor.traits]))


def trait_config(cfg, name: str):
    """The trait config of `name`: the cell's own, or an OCT constitution / builtin by name."""
    if name == cfg.trait.name:
        return cfg.trait
    src = "oct_few_shot" if name.startswith("oct_") else "builtin"
    return OmegaConf.create({"name": name, "source": src, "path": None})
