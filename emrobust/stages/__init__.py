"""The stages. Each module declares `VERSION` (bump it when the stage's output would change), `READS` (the config
paths it reads) and `CONTENT` (hashes of what it reads outside the config), from which `emrobust.keys` builds
its key; and `run(ctx) -> dict` (write into `ctx.out`, return extra manifest fields). Nothing in a stage knows
about caching: see `emrobust.pipeline` (the graph and the run loop) and `emrobust.store`."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import STAGES as ORDER  # noqa: F401  (the stage order, re-exported)


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage in one cell: a function of (cell seed, stage name) alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Context:
    cfg: Any  # the stage's view of the cell config (emrobust.keys.view): only what the stage declared it reads
    name: str  # the node's id in the cell's graph (the stage name, or e.g. "sample@start")
    key: str
    seed: int
    out: Path
    inputs: dict[str, Path]  # upstream artifacts by role ("base": the base model's path or hub id)
    manifests: dict[str, dict] = field(default_factory=dict)  # upstream manifests by role
    device: Any = None  # torch.device
    ckpt: Path | None = None  # the store's checkpoint dir for this build (survives a killed build)
    params: dict = field(default_factory=dict)  # the node's own parameters (in its key), e.g. {"step": 100}

    def resumable(self, name: str, fn):
        """`fn()`'s JSON-able result, kept in the checkpoint dir: a requeued build of this key trains on exactly
        the data the interrupted build generated (sampling on GPUs is not bit-reproducible), and skips
        regenerating it."""
        from .. import distributed

        if self.ckpt is None:
            return fn()
        path = self.ckpt / f"{name}.json"
        if path.exists():
            self.log.info("resuming with the %s generated before the interruption (%s)", name, path)
            return json.loads(path.read_text())
        result = fn()
        if distributed.is_main():
            self.ckpt.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
        distributed.barrier()
        return result

    @property
    def trainer_dir(self) -> Path:
        """Where trainers write checkpoints: kept across preemption/requeue, so a rerun resumes."""
        return self.ckpt if self.ckpt is not None else self.out / "trainer"

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"emrobust.{self.name}")

    def model_path(self, role: str = "start") -> Path:
        """The weights an upstream role holds: a fold artifact's `model/`, else the base model's path."""
        if self.manifests.get(role, {}).get("stage") == "fold":
            return self.inputs[role] / "model"
        return Path(self.inputs[role])


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
