"""Where a cell's data files come from: one resolver for every kind (constitutions, EM datasets, eval sets, the
interleave defense's benign set).

A config node of such a kind names a `source`:
- `builtin`: a file this team ships with the package (`<builtin dir>/<name><suffix>`);
- `path`: the user's file (`<node>.path`);
- `registry`: a published file pinned by URL and sha256 (emrobust.data.registry), fetched into `paths.cache` or
  copied from the offline mirror `paths.data_mirror`; a user-supplied registry file (Model Organisms' data) is
  read from `<node>.path`.

`Kind.path` resolves the file (a registry file is fetched, or `Unmet` inside `registry.no_fetch`), `Kind.load` reads
it (validated by the kind's reader), `Kind.content_id` is its identity for stage keys (a registry file's pinned hash:
nothing read or fetched), and `Kind.needs` names the registry file a planner fetches before submitting
(emrobust.sweeps.preflight). Errors name the node's field.

Every kind is declared beside its reader: `em_datasets.KIND`, `evalsets.KIND`, `constitutions.KIND` (whose
`constitutions.SOURCE` adds mixtures, which have no single file). emrobust.data.inputs lists which a cell reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from . import registry

BUILTIN = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class Kind:
    """One kind of data file: `what` it is (for messages), its builtin folder and suffix, its registry entry
    (`entry(node, where)`), its reader (`read(path)` -> the validated content; errors name file and line), and its
    `source` read from a node (`source(node)` -> builtin|path|registry)."""
    what: str
    builtin: Path
    suffix: str
    entry: Callable[..., registry.Entry]
    read: Callable[[Path], Any]
    source: Callable[..., str] = lambda node: str(node.source)
    sources: str = "builtin|path|registry"

    def _source(self, node, where: str) -> str:
        src = self.source(node)
        if src not in ("builtin", "path", "registry"):
            raise ConfigError(f"unknown {where}.source {node.source!r} ({self.sources})", where=f"{where}.source")
        return src

    def builtin_file(self, node, where: str) -> Path:
        p = self.builtin / f"{node.name}{self.suffix}"
        if not p.is_file():
            known = sorted(x.stem for x in self.builtin.glob(f"*{self.suffix}"))
            raise ConfigError(f"unknown builtin {self.what} {node.name!r}; known: {known}", where=f"{where}.name")
        return p

    def user_file(self, node, where: str) -> Path:
        if not node.path:
            raise ConfigError(f"{where}.source={node.source} needs {where}.path", where=f"{where}.path")
        return Path(node.path).expanduser()

    def path(self, node, paths=None, where: str = "") -> Path:
        """The file `node` names: builtin, the user's, or the registry's (fetched or copied into the cache)."""
        src = self._source(node, where)
        if src == "builtin":
            return self.builtin_file(node, where)
        if src == "path":
            return self.user_file(node, where)
        cache, mirror = _places(paths)
        return registry.fetch(self.entry(node, where).name, cache, mirror, user_path=node.get("path"),
                              entry=self.entry(node, where))

    def load(self, node, paths=None, where: str = ""):
        """The content of the file `node` names, read and validated by the kind's reader."""
        return self.read(self.path(node, paths, where))

    def content_id(self, node, paths=None, where: str = "") -> str:
        """The identity of the file's bytes for stage keys: a registry file's pinned hash (nothing read or
        fetched; a user-supplied one: its sha256), else the sha256 of the file."""
        src = self._source(node, where)
        if src == "registry":
            cache, mirror = _places(paths)
            return registry.content_id(self.entry(node, where), cache, mirror, user_path=node.get("path"))
        p = self.path(node, paths, where)
        if not p.is_file():
            raise ConfigError(f"{self.what} file does not exist", file=str(node.path), where=f"{where}.path")
        return registry.sha256_file(p)

    def needs(self, node, paths, where: str = "") -> dict[str, tuple]:
        """{registry name: (entry, user path, cache, mirror)} of a registry file, for the planner; {} otherwise."""
        if self._source(node, where) != "registry":
            return {}
        e = self.entry(node, where)
        cache, mirror = _places(paths)
        return {e.name: (e, node.get("path"), cache, mirror)}


def _places(paths) -> tuple[Path, Path | None]:
    """(cache, mirror) of a cell's `paths` group, else the environment's (EMROBUST_CACHE, EMROBUST_DATA_MIRROR)."""
    cache = Path(paths.cache).expanduser() if paths is not None and paths.cache else registry.default_cache()
    mirror = (paths.data_mirror if paths is not None else None) or registry.default_mirror()
    return cache, mirror


@dataclass(frozen=True)
class Source:
    """What emrobust.data.inputs asks of an input's source, for a source that is not one file of a `Kind` (a
    mixture of constitutions): `load`, `content_id` and `needs`, each `(node, paths, where)` as on `Kind`."""
    load: Callable[..., Any]
    content_id: Callable[..., str]
    needs: Callable[..., dict[str, tuple]]
