"""Structured configs: the typed schema every composed cell is validated against, and what each field means
for caching.

Each dataclass mirrors one `conf/` group (one axis of the experiment or one stage's hyperparameters); each group
is a module of this package, `emrobust/config/<group>.py`, with its fields, its choices (every enumerated option
is an `Enum`), its ranges and its rules. `root.py` holds the cell (`Config`) and `register()`, which puts it in
Hydra's ConfigStore; `conf/config.yaml` lists `config_schema` first in its defaults, so a typo'd key, a wrongly
typed value or an unknown choice (the message lists the valid values) fails at composition, before anything runs.

Every field is part of the key of each stage that reads it (the stages declare what they read:
`emrobust.core.keys`), except where its metadata says otherwise; that is declared on the field, once, with
`setting(...)` (this module):
- `execution="why"`: how a stage runs, never what it builds (batch sizes of generation and judging,
  concurrency, retries, timeouts, checkpoint and logging intervals, DeepSpeed, device, where files live);
- `label="why"`: a name for the other fields (a preset's name), identifying nothing by itself;
- `location="why"`: where a file is; its *content* is hashed into the key instead (the stage's `CONTENT`);
- `when=predicate(parent node)`: the field only matters when the predicate holds on the config node that holds
  it (e.g. the paraphrase settings only when `strategy=paraphrase`); otherwise it is left out of the key.

What a value may be is declared on the field too: `setting(..., ge=, gt=, le=, lt=)` bounds a number (each
element of a list), `also={value: meaning}` names the values outside the bounds that mean something of their own
(e.g. -1 = no step limit), `nonempty=True` refuses an empty list or string; `None` is always the field's
documented default. Each default is written once, on its field: a conf/ preset sets only what differs from it
(and what names it). `RULES` are the constraints between fields: each group module declares its own (`Rule`), and
`root.RULES` is all of them in the order they are checked. `emrobust.engine.validation` enforces all of it, and the
checks that need the data (counts against what the files hold), before any model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable


@dataclass(frozen=True)
class Range:
    """What a value may be: bounds on a number (on each element of a list), values outside them that have a
    meaning of their own (`also`), and whether an empty list or string is refused."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple[tuple[Any, str], ...] = ()
    nonempty: bool = False

    def describe(self) -> str:
        lo = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        hi = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        text = (f"in {lo}, {hi}" if lo and hi else f">= {self.ge}" if self.ge is not None else
                f"> {self.gt}" if self.gt is not None else f"<= {self.le}" if self.le is not None else
                f"< {self.lt}" if self.lt is not None else "")
        also = ", ".join(f"{v} ({why})" for v, why in self.also)
        return f"{text} or {also}" if text and also else text or also

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range, or None (None itself is the field's documented default)."""
        if value is None:
            return None
        if isinstance(value, (str, list, tuple)) and self.nonempty and len(value) == 0:
            return "must not be empty"
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v in dict(self.also):
                continue
            if ((self.ge is not None and not v >= self.ge) or (self.gt is not None and not v > self.gt)
                    or (self.le is not None and not v <= self.le) or (self.lt is not None and not v < self.lt)):
                return f"{v} is out of range: must be {self.describe()}"
        return None


@dataclass(frozen=True)
class Rule:
    """A constraint between fields, about the field `where`: `problem(cfg)` says what is wrong, or None."""
    where: str
    problem: Callable[[Any], str | None]


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            execution: str | None = None, label: str | None = None, location: str | None = None,
            when: Callable[[Any], bool] | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, also: dict[Any, str] | None = None,
            nonempty: bool = False):
    """A schema field with its caching role and its range (see the module docstring). At most one of
    execution/label/location."""
    md: dict[str, Any] = {}
    for kind, why in (("execution", execution), ("label", label), ("location", location)):
        if why:
            md[kind] = why
    if len([k for k in ("execution", "label", "location") if k in md]) > 1:
        raise ValueError("a field is execution-only, a label or a location, not several")
    if when is not None:
        md["when"] = when
    if any(b is not None for b in (ge, gt, le, lt)) or also or nonempty:
        md["range"] = Range(ge, gt, le, lt, tuple((also or {}).items()), nonempty)
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


class DataSource(StrEnum):
    builtin = "builtin"
    path = "path"
    registry = "registry"


def openai_backend(node) -> bool:
    """`when` of the fields an OpenAI-compatible endpoint reads (generation, judge)."""
    return node.backend == "openai"
