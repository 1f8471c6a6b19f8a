"""EM (corrupted fine-tuning) datasets: resolve a config to validated chat examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import chat, registry, sources

# our own datasets, shipped with the package as chat JSONL (emrobust/data/builtin/em/<name>.jsonl); the same kind
# serves the interleave defense's benign set (`defense.interleave`)
KIND = sources.Kind("EM dataset", sources.BUILTIN / "em", ".jsonl",
                    lambda node, where="em_dataset": registry.get(str(node.name), where=f"{where}.name"),
                    chat.read_jsonl)
BUILTIN = KIND.builtin


def load_all(cfg, paths=None, where: str = "em_dataset") -> list[list[dict]]:
    """Every example of the dataset `cfg` names (builtin | path | registry: emrobust.data.sources), validated
    (errors name the file and line; `where` is the config node, e.g. `defense.interleave`).

    `paths` (the cell's `paths` group) gives the cache and mirror for `source: registry`; without it the
    environment's (EMROBUST_CACHE, EMROBUST_DATA_MIRROR) are used.
    """
    return KIND.load(cfg, paths, where)


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
