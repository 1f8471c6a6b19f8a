"""EM (corrupted fine-tuning) datasets: resolve a config to validated chat examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import chat, sources

# our own datasets, shipped with the package as chat JSONL (emrobust/data/builtin/em/<name>.jsonl)
BUILTIN = sources.EM.builtin


def load_all(cfg, paths=None, where: str = "em_dataset") -> list[list[dict]]:
    """Every example of the dataset `cfg` names (builtin | path | registry: emrobust.data.sources), validated
    (errors name the file and line; `where` is the config node, e.g. `defense.interleave`).

    `paths` (the cell's `paths` group) gives the cache and mirror for `source: registry`; without it the
    environment's (EMROBUST_CACHE, EMROBUST_DATA_MIRROR) are used.
    """
    return chat.read_jsonl(sources.EM.path(cfg, paths, where))


def content_sha256(cfg, paths=None, where: str = "em_dataset") -> str:
    """The identity of the dataset's file for stage keys (sources.Kind.content_id)."""
    return sources.EM.content_id(cfg, paths, where)


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
