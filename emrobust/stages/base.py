"""The base model as the root of every cell's stage graph. Its key is what determines the loaded weights, declared
once in emrobust.core.models.Base (judges and generators key their weights by it too). It is not built in the store:
`place` prepares it into the model cache once (emrobust.core.models.prepare: a GGUF converted, a pinned hub snapshot
fetched) and gives its path. Seedless: one base model for every seed."""
from __future__ import annotations

from ..core.models import Base, prepare

VERSION, READS, CONTENT = Base.VERSION, Base.READS, Base.CONTENT
SEEDED = False


def place(cfg) -> str:
    return str(prepare(cfg.base_model, cfg.paths.cache))
