"""The six stages. Each module has `VERSION` (bump it when the stage's output would change), `key_config(cfg)`
(everything in the cell config that can change its output), and `run(ctx) -> dict` (write into `ctx.out`,
return extra manifest fields). Nothing in a stage knows about caching: see `emrobust.pipeline`."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

ORDER = ("questions", "distill", "introspect", "fold", "em", "evaluate")


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage in one cell: a function of (cell seed, stage name) alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Context:
    cfg: DictConfig
    name: str
    key: str
    seed: int
    out: Path
    inputs: dict[str, Path]  # artifacts already built in this cell ("base" = the base model's path)
    manifests: dict[str, dict] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    ckpt: Path | None = None  # the store's checkpoint dir for this build (survives a killed build)

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

    def model_path(self) -> Path:
        """Weights this cell's model starts from: the persona (fold output) if any, else the base model."""
        return self.inputs["fold"] / "model" if "fold" in self.inputs else Path(self.inputs["base"])


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sub(cfg: DictConfig, *keys: str) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
