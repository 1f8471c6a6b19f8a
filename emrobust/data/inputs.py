"""What a cell reads besides its config: one declaration, read by the stage keys (each stage's `CONTENT`), the
validation (every active input is resolved and read before a model loads), the leakage check (the training text
each input adds) and the sweep planner (the registry files to fetch first, emrobust.sweeps.preflight).

Each `Input` is a config node (or several: the monitor's constitutions), when the cell reads it, and its source:
the kind of file it names (a `sources.Kind`, declared beside its reader: builtin | path | registry, one resolver
for every kind), or `constitutions.SOURCE` for a trait (a mixture has no single file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import OmegaConf

from . import constitutions, domains, em_datasets, evalsets, sources


def _persona(cfg) -> bool:
    return cfg.trait.name != "none"


def _em(cfg) -> bool:
    return cfg.em_dataset.name != "none"


def _interleave(cfg) -> bool:
    return _em(cfg) and str(cfg.defense.name) == "interleave"


def _monitor_traits(cfg) -> list[tuple[str, Any]]:
    own = str(cfg.trait.name)
    return [(f"eval.monitor.traits {t}", constitutions.trait_config(cfg, t))
            for t in constitutions.monitored_traits(cfg) if t != own]


@dataclass(frozen=True)
class Input:
    """A data file a cell reads: the config node `where` (or `nodes(cfg)`: (where, node) pairs), read when
    `when(cfg)` holds, through its `source` (a `sources.Kind`, or `constitutions.SOURCE`, which adds mixtures):
    `load`, `content_id` and `needs`, each given (node, paths, where)."""
    where: str
    when: Callable[[Any], bool]
    source: sources.Kind | sources.Source
    nodes: Callable[[Any], list[tuple[str, Any]]] | None = None

    def active_nodes(self, cfg) -> list[tuple[str, Any]]:
        if not self.when(cfg):
            return []
        return self.nodes(cfg) if self.nodes is not None else [(self.where, OmegaConf.select(cfg, self.where))]


INPUTS = (
    Input("trait", _persona, constitutions.SOURCE),
    Input("em_dataset", _em, em_datasets.KIND),
    Input("eval", lambda cfg: True, evalsets.KIND),
    Input("defense.interleave", _interleave, em_datasets.KIND),
    Input("eval.monitor", lambda cfg: bool(cfg.eval.monitor.enabled), constitutions.SOURCE, _monitor_traits),
    Input("eval.in_domain", lambda cfg: domains.of(cfg) is not None, domains.KIND, domains.nodes),
)
BY_WHERE = {i.where: i for i in INPUTS}


def content_id(cfg, where: str) -> str | None:
    """The identity of input `where`'s file for the stage keys (its CONTENT; an input of several nodes: the first
    one's); None when the cell does not read it."""
    i = BY_WHERE[where]
    ids = [i.source.content_id(node, cfg.paths, w) for w, node in i.active_nodes(cfg)]
    return ids[0] if ids else None


def read(cfg, where: str) -> list:
    """The content of input `where` (one per node; [] when the cell does not read it), validated."""
    i = BY_WHERE[where]
    return [i.source.load(node, cfg.paths, w) for w, node in i.active_nodes(cfg)]


def needs(cfg) -> dict[str, tuple]:
    """{registry name: (entry, user path, cache, mirror)} of every registry file the cell reads."""
    out: dict[str, tuple] = {}
    for i in INPUTS:
        for where, node in i.active_nodes(cfg):
            out.update(i.source.needs(node, cfg.paths, where))
    return out
