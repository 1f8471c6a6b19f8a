"""Stage keys: one rule for every stage.

Each stage module declares what it reads: `READS`, config paths (a group, a sub-config or one field; `Read(path,
when=..., exclude=...)` for a conditional read or one that leaves sub-configs to other stages), and `CONTENT`,
{name: function(cfg)} for what is not in the config but changes the artifact (a file's sha256, another model's
key). From these, and nothing written per stage, `key_config` builds the stage's key material:

    the resolved subtree of each declared path, minus every field the schema (emrobust/config/) marks
    execution-only, label or location, and minus fields whose `when` does not hold,
    + the CONTENT hashes,

and `stage_key` hashes it with the stage name, its code VERSION, the upstream stages' keys and the seed.
`view` gives a stage the config it may read: its declared subtrees (execution-only fields included) and
`paths`, `pipeline`, `deepspeed`, `seed`; reading anything else raises, so an undeclared read cannot hide.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from .. import config as schema
from .store import stable_hash

# visible to every stage, never part of a key (locations, execution, the cell seed is hashed separately)
ALWAYS = ("paths", "pipeline", "deepspeed", "seed")
EXCLUDED = ("execution", "label", "location")


@dataclass(frozen=True)
class Read:
    """A declared read: `path` (dotted), only when `when(cfg)` holds, without the sub-paths in `exclude`."""
    path: str
    when: Callable[[DictConfig], bool] | None = None
    exclude: tuple[str, ...] = ()

    def active(self, cfg: DictConfig) -> bool:
        return self.when is None or bool(self.when(cfg))


def reads(spec) -> list[Read]:
    return [r if isinstance(r, Read) else Read(r) for r in spec.READS]


# ---------------------------------------------------------------- walking the schema
@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # in the namespace of the module declaring `cls`


def _dataclass_of(tp) -> type | None:
    """The dataclass inside a type hint (Optional[X] included), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


@functools.cache  # the schema is fixed for the process: a plan asks these for every read of every node
def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def field_at(path: str) -> tuple[type | None, dataclasses.Field | None]:
    """(the dataclass of the value at `path` or None for a leaf, the Field describing it or None at the root)."""
    cls, fld = schema.Config, None
    for part in path.split("."):
        if cls is None or part not in _fields(cls):
            raise KeyError(f"{path!r} is not in the schema (emrobust/config/)")
        fld = _fields(cls)[part]
        cls = _dataclass_of(_hints(cls)[part])
    return cls, fld


def leaves(cls=schema.Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf field of the schema: (dotted path, Field)."""
    for name, f in _fields(cls).items():
        sub = _dataclass_of(_hints(cls)[name])
        if sub is not None:
            yield from leaves(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", f


def kind(fld: dataclasses.Field) -> str | None:
    """execution | label | location, or None for a field that is part of the key of every stage reading it."""
    return next((k for k in EXCLUDED if k in fld.metadata), None)


@functools.cache
def ancestors(path: str) -> tuple[tuple[str, dataclasses.Field], ...]:
    """(path, Field) of `path` and of every config above it, outermost first."""
    parts = path.split(".")
    return tuple((".".join(parts[: i + 1]), field_at(".".join(parts[: i + 1]))[1]) for i in range(len(parts)))


def _node(cfg: DictConfig, path: str):
    return OmegaConf.select(cfg, path, throw_on_missing=True) if path else cfg


def active(cfg: DictConfig, path: str) -> bool:
    """Does the field at `path` matter for this cell: every `when` on it and above it holds."""
    for p, f in ancestors(path):
        when = f.metadata.get("when")
        if when is not None and not when(_node(cfg, p.rpartition(".")[0])):
            return False
    return True


def keyed(path: str) -> bool:
    """Is the field (and everything above it) part of keys at all (not execution-only, a label or a location)?"""
    return all(kind(f) is None for _, f in ancestors(path))


def pruned(node, cls, exclude: tuple[str, ...] = ()) -> dict:
    """`node` (a config of dataclass `cls`) as key material: without execution-only, label and location fields
    nor fields whose `when` does not hold."""
    return _prune(node, cls, exclude)


def _prune(node, cls, exclude: tuple[str, ...] = ()) -> dict:
    out = {}
    for name, f in _fields(cls).items():
        if name in exclude or kind(f) is not None:
            continue
        when = f.metadata.get("when")
        if when is not None and not when(node):
            continue
        sub = _dataclass_of(_hints(cls)[name])
        value = node[name]
        if sub is not None and value is not None:
            nested = tuple(e.split(".", 1)[1] for e in exclude if e.startswith(name + "."))
            out[name] = _prune(value, sub, nested)
        else:
            out[name] = _plain(value)
    return out


def _plain(value):
    """A config value as JSON-able data (enums as their strings)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return str(value) if isinstance(value, str) else value


def key_config(spec, cfg: DictConfig) -> dict:
    """The key material of stage `spec` (a stage module, or any object with READS and CONTENT) for `cfg`."""
    out: dict[str, Any] = {}
    for r in reads(spec):
        if not r.active(cfg) or not active(cfg, r.path):
            continue
        cls, fld = field_at(r.path)
        if not keyed(r.path):  # a location, label or execution-only field is readable, never key material
            continue
        node = _node(cfg, r.path)
        if cls is not None:
            out[r.path] = _prune(node, cls, r.exclude)
        else:
            out[r.path] = _plain(node)
    content = {}
    for name, fn in getattr(spec, "CONTENT", {}).items():
        value = fn(cfg)
        if value is not None:
            content[name] = value
    if content:
        out["content"] = content
    return out


def stage_key(stage: str, version: int, config: dict, upstream: dict[str, str], seed: int | None,
              params: dict | None = None) -> str:
    """The one key rule: stage name, code version, key material, upstream keys (by role), seed, node params."""
    material = {"stage": stage, "version": version, "config": config, "upstream": upstream, "seed": seed}
    if params:
        material["params"] = params
    return stable_hash(material)


def read_paths(spec, cfg: DictConfig | None = None) -> list[str]:
    """The config paths a stage may read (for its view and the README's table)."""
    return [r.path for r in reads(spec) if cfg is None or r.active(cfg)]


def view(cfg: DictConfig, spec) -> DictConfig:
    """The config a stage sees: its declared reads (whole subtrees, execution-only fields included) and ALWAYS.
    Anything else raises ConfigAttributeError (struct mode)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}
    for path in [*ALWAYS, *read_paths(spec)]:
        parts = path.split(".")
        src, dst = full, out
        for p in parts[:-1]:
            src = src[p]
            dst = dst.setdefault(p, {})
        dst[parts[-1]] = src[parts[-1]]
    v = OmegaConf.create(out)
    OmegaConf.set_struct(v, True)
    return v


# ---------------------------------------------------------------- reporting
def not_keyed() -> dict[str, list[tuple[str, str]]]:
    """{execution|label|location: [(path, why)]}: every field the schema keeps out of keys, with its reason."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in EXCLUDED}

    def walk(cls, prefix):
        for name, f in _fields(cls).items():
            k = kind(f)
            if k is not None:
                out[k].append((prefix + name, f.metadata[k]))
                continue
            sub = _dataclass_of(_hints(cls)[name])
            if sub is not None:
                walk(sub, prefix + name + ".")

    walk(schema.Config, "")
    return out


if __name__ == "__main__":  # python -m emrobust.core.keys: every field kept out of stage keys, and why
    for kind_, rows in not_keyed().items():
        print(f"{kind_}:")
        for path, why in rows:
            print(f"  {path:<42} {why}")
