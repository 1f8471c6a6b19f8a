"""The stages. Each module declares `VERSION` (bump it when the stage's output would change), `READS` (the config
paths it reads) and `CONTENT` (hashes of what it reads outside the config), from which `emrobust.core.keys` builds
its key; and `run(ctx) -> dict` (write into `ctx.out`, return extra manifest fields). Nothing in a stage knows
about caching: see `emrobust.engine.pipeline` (the graph and the run loop) and `emrobust.core.store`.

What else the engine asks of a stage is the protocol below (`PROTOCOL`, with its defaults, read by `spec`): a
stage module declares only where it differs, and the run loop names no stage."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import STAGES as ORDER  # noqa: F401  (the stage order, re-exported)
from ..core import distributed


def record_training(cfg, node_id: str, manifest: dict, summary: dict) -> None:
    """What run.json keeps of a node's manifest, by default: the data a training stage trained on and its
    optimizer steps (its dose), under `training[node_id]`."""
    if manifest.get("data"):
        summary["training"][node_id] = dict(manifest["data"])
        if (manifest.get("train") or {}).get("steps") is not None:
            summary["training"][node_id]["steps"] = manifest["train"]["steps"]


def record_diversity(cfg, node_id: str, manifest: dict, summary: dict) -> None:
    """`record_training`, and the diversity measured on what is trained on: the cell's `diversity` (distill's,
    which comes after the selection's, else the selection's)."""
    record_training(cfg, node_id, manifest, summary)
    if manifest.get("diversity"):
        summary["diversity"] = manifest["diversity"]


# what the engine (emrobust.engine.pipeline.run_cell) asks of a stage module beyond VERSION/READS/CONTENT/run, and the
# default of each: a module declares an attribute of the same name (upper case) only where it differs
PROTOCOL: dict[str, Any] = {
    "seeded": True,  # the cell seed is part of the key (not for one instrument per persona, nor the base model)
    "distributed": False,  # trains: runs on every rank of a multi-process job (emrobust.core.distributed)
    "place": None,  # place(cfg) -> path: not built in the store but put there (the base model, in the model cache)
    "accept": None,  # accept(cfg, path, data, screen): the cell's checks of its artifact, built or reused
    "record": record_training,  # record(cfg, node_id, manifest, summary): what run.json keeps of the manifest
    "measures": False,  # its manifest's `metrics` are the cell's evaluation, logged with the cell's training data
}


@dataclass(frozen=True)
class Spec:
    """One stage as the engine sees it: its module and the protocol's answers."""
    module: Any
    seeded: bool
    distributed: bool
    place: Callable | None
    accept: Callable | None
    record: Callable
    measures: bool


def spec(module) -> Spec:
    """The protocol's answers of one stage module (PROTOCOL's defaults where it declares nothing). Functions are
    declared lower case (`accept`, `record`, `place`), flags upper case (`SEEDED`, `DISTRIBUTED`, `MEASURES`)."""
    got = {k: getattr(module, k if callable(d) or d is None else k.upper(), d) for k, d in PROTOCOL.items()}
    return Spec(module, **got)


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage in one cell: a function of (cell seed, stage name) alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Context:
    cfg: Any  # the stage's view of the cell config (emrobust.core.keys.view): only what the stage declared it reads
    name: str  # the node's id in the cell's graph (the stage name, or e.g. "sample@start")
    key: str
    seed: int
    out: Path
    inputs: dict[str, Path]  # upstream artifacts by role ("base": the base model's path or hub id)
    manifests: dict[str, dict] = field(default_factory=dict)  # upstream manifests by role
    device: Any = None  # torch.device
    ckpt: Path | None = None  # the store's checkpoint dir for this build (survives a killed build)
    params: dict = field(default_factory=dict)  # the node's own parameters (in its key), e.g. {"step": 100}
    # screen(what, [(source, text)]) raises when generated training text holds one of the cell's eval questions
    # (emrobust.engine.leakage); it cannot change an artifact, only stop a build before it trains
    screen: Callable[[str, list[tuple[str, str]]], None] = lambda what, texts: None

    def resumable(self, name: str, fn):
        """`fn()`'s JSON-able result, kept in the checkpoint dir: a requeued build of this key trains on exactly
        the data the interrupted build generated (sampling on GPUs is not bit-reproducible), and skips
        regenerating it."""
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


class TopUpShortfall(RuntimeError):
    """Generation did not fill the requested count within the configured number of rounds."""


def top_up(n: int, draw: Callable[[int, list[int]], list], reject: Callable[[Any], str | None], max_rounds: int,
           what: str, hint: str) -> tuple[list, list[dict[str, int]], int]:
    """Fill `n` slots with accepted samples: the one rule by which distill and introspect reach their requested
    counts. Round 0 draws every slot; each later round draws again (new seeds: `draw(round, slots)` returns one
    sample per slot) for the slots whose sample `reject` gave a reason for, until all are filled or `max_rounds`
    rounds have run; then TopUpShortfall names what is missing and why. Returns (one accepted sample per slot,
    per slot the {reason: count} of the samples it replaced, rounds run). Deterministic given `draw`, so a larger
    `max_rounds` builds the same data or fails the same way."""
    kept: list = [None] * n
    replaced: list[Counter] = [Counter() for _ in range(n)]
    todo, rnd = list(range(n)), 0
    while todo and rnd < max_rounds:
        for i, sample in zip(todo, draw(rnd, todo), strict=True):
            why = reject(sample)
            if why is None:
                kept[i] = sample
            else:
                replaced[i][why] += 1
        todo = [i for i in todo if kept[i] is None]
        rnd += 1
    if todo:
        why = sum(replaced, Counter())
        raise TopUpShortfall(f"{what}: {len(todo)} of {n} still missing after {rnd} rounds of sampling "
                             f"({', '.join(f'{k}: {v}' for k, v in why.most_common())} samples rejected); {hint}")
    return kept, [dict(c) for c in replaced], rnd


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
