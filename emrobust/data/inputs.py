"""What a cell reads besides its config: one declaration, read by the stage keys (each stage's `CONTENT`), the
validation (every active input is resolved and read before a model loads), the leakage check (the training text
each input adds) and the sweep planner (the registry files to fetch first, emrobust.preflight).

Each `Input` is a config node (or several: the monitor's constitutions), when the cell reads it, and how its
file is found (a `sources.Kind`: builtin | path | registry, one resolver for every kind).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import OmegaConf

from . import sources


def _persona(cfg) -> bool:
    return cfg.trait.name != "none"


def _em(cfg) -> bool:
    return cfg.em_dataset.name != "none"


def _interleave(cfg) -> bool:
    from ..defenses import active

    return _em(cfg) and active(cfg) == "interleave"


def _monitor_traits(cfg) -> list[tuple[str, Any]]:
    from ..stages import directions

    own = str(cfg.trait.name)
    return [(f"eval.monitor.traits {t}", directions._trait_cfg(cfg, t)) for t in directions.traits(cfg) if t != own]


def _trait_kind():
    from . import constitutions

    return constitutions


@dataclass(frozen=True)
class Input:
    """A data file a cell reads: the config node `where` (or `nodes(cfg)`: (where, node) pairs), read when
    `when(cfg)` holds; `trait` marks a constitution (a mixture has no single file: its pieces are resolved by
    emrobust.data.constitutions), else `kind` resolves it."""
    where: str
    when: Callable[[Any], bool]
    kind: sources.Kind | None = None
    nodes: Callable[[Any], list[tuple[str, Any]]] | None = None

    def active_nodes(self, cfg) -> list[tuple[str, Any]]:
        if not self.when(cfg):
            return []
        return self.nodes(cfg) if self.nodes is not None else [(self.where, OmegaConf.select(cfg, self.where))]

    def content_id(self, node, paths, where: str) -> str:
        if self.kind is None:
            return _trait_kind().content_sha256(node, paths)
        return self.kind.content_id(node, paths, where)

    def needs(self, node, paths, where: str) -> dict[str, tuple]:
        if self.kind is None:
            return _trait_kind().needs(node, paths)
        return self.kind.needs(node, paths, where)

    def read(self, node, paths, where: str):
        """The input's content, validated (errors name the file, the line and `where`)."""
        if self.kind is None:
            return _trait_kind().load_cfg(node, paths)
        if self.kind is sources.EM:
            from . import em_datasets

            return em_datasets.load_all(node, paths, where)
        from . import evalsets

        return evalsets.load(self.kind.path(node, paths, where))


INPUTS = (
    Input("trait", _persona),
    Input("em_dataset", _em, sources.EM),
    Input("eval", lambda cfg: True, sources.EVAL),
    Input("defense.interleave", _interleave, sources.EM),
    Input("eval.monitor", lambda cfg: bool(cfg.eval.monitor.enabled), nodes=_monitor_traits),
)
BY_WHERE = {i.where: i for i in INPUTS}


def content_id(cfg, where: str) -> str | None:
    """The identity of input `where`'s file for the stage keys (its CONTENT); None when the cell does not read it."""
    i = BY_WHERE[where]
    return i.content_id(OmegaConf.select(cfg, where), cfg.paths, where) if i.when(cfg) else None


def read(cfg, where: str) -> list:
    """The content of input `where` (one per node; [] when the cell does not read it), validated."""
    i = BY_WHERE[where]
    return [i.read(node, cfg.paths, w) for w, node in i.active_nodes(cfg)]


def needs(cfg) -> dict[str, tuple]:
    """{registry name: (entry, user path, cache, mirror)} of every registry file the cell reads."""
    out: dict[str, tuple] = {}
    for i in INPUTS:
        for where, node in i.active_nodes(cfg):
            out.update(i.needs(node, cfg.paths, where))
    return out
