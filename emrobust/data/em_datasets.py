"""EM (corrupted fine-tuning) datasets: resolve a config to validated chat examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import chat, registry

# our own datasets, shipped with the package as chat JSONL (emrobust/data/builtin/em/<name>.jsonl)
BUILTIN = Path(__file__).parent / "builtin" / "em"


def load_all(cfg, paths=None) -> list[list[dict]]:
    """Every example of the dataset, validated (errors name the file and line).

    `paths` (the cell's `paths` group) gives the cache and mirror for `source: registry`; without it the
    environment's (EMROBUST_CACHE, EMROBUST_DATA_MIRROR) are used.
    """
    if cfg.source == "builtin":
        path = BUILTIN / f"{cfg.name}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in BUILTIN.glob("*.jsonl"))
            raise ConfigError(f"unknown builtin EM dataset {cfg.name!r}; known: {known}", where="em_dataset.name")
        return chat.read_jsonl(path)
    if cfg.source == "path":
        if not cfg.path:
            raise ConfigError("em_dataset.source=path needs em_dataset.path", where="em_dataset.path")
        return chat.read_jsonl(cfg.path)
    if cfg.source == "registry":
        cache = paths.cache if paths is not None else None
        mirror = paths.data_mirror if paths is not None else registry.default_mirror()
        return chat.read_jsonl(registry.fetch(cfg.name, cache, mirror, user_path=cfg.path))
    raise ConfigError(f"unknown em_dataset.source {cfg.source!r} (builtin|path|registry)", where="em_dataset.source")


def content_sha256(cfg, paths=None) -> str:
    """The identity of the dataset's file for stage keys: a registry dataset's pinned hash (nothing read or
    fetched; a user-supplied Model-Organisms file: its sha256), else the sha256 of the file."""
    if cfg.source == "registry":
        entry = registry.get(cfg.name)
        cache = paths.cache if paths is not None else None
        mirror = paths.data_mirror if paths is not None else registry.default_mirror()
        return registry.content_id(entry, cache, mirror or registry.default_mirror(), user_path=cfg.path)
    if cfg.source == "builtin":
        path = BUILTIN / f"{cfg.name}.jsonl"
        if not path.is_file():
            load_all(cfg, paths)  # the error naming the known datasets
        return registry.sha256_file(path)
    if not cfg.path:
        raise ConfigError("em_dataset.source=path needs em_dataset.path", where="em_dataset.path")
    if not Path(cfg.path).expanduser().is_file():
        raise ConfigError("EM dataset file does not exist", file=str(cfg.path), where="em_dataset.path")
    return registry.sha256_file(Path(cfg.path).expanduser())


def split(rows: list[list[dict]], cfg, seed: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """(train, held out): a seeded subsample of `n_examples`, then `heldout_fraction` held out."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(rows))
    if cfg.n_examples is not None:
        if cfg.n_examples > len(rows):  # never capped
            raise ConfigError(f"n_examples={cfg.n_examples} but the dataset has {len(rows)} rows",
                              where="em_dataset.n_examples", hint=f"em_dataset.n_examples=null uses all {len(rows)}")
        idx = idx[: cfg.n_examples]
    n_held = int(round(len(idx) * cfg.heldout_fraction))
    held, train = idx[:n_held], idx[n_held:]
    return [rows[i] for i in sorted(train)], [rows[i] for i in sorted(held)]
