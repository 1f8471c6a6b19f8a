"""`pipeline.*`: which stages run and where; the stage order."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from .schema import setting

STAGES = ("questions", "distill", "introspect", "fold", "directions", "classifier", "em", "sample", "capability",
          "evaluate")

# pipeline.until: a stage, or the evaluation of the cell's starting model (the persona before EM)
START_NODES = ("sample@start", "evaluate@start")
Until = StrEnum("Until", {s: s for s in (*STAGES, *START_NODES)})


class OnDamage(StrEnum):
    rebuild = "rebuild"  # a warning names the file, the artifact is built again
    error = "error"  # the run stops with an error naming the file


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class PipelineConfig:
    # stop after this node: it and what it needs run (a stage name, or sample@start / evaluate@start)
    until: Optional[Until] = setting(None, execution="which stages run, not what any of them builds")
    device: Device = setting(Device.auto, execution="where the maths runs; sampling is seeded per sample, so "
                                                    "only float rounding differs")
    on_damage: OnDamage = setting(OnDamage.rebuild, execution="what happens to a cached artifact whose files no "
                                  "longer match its manifest's sha256: rebuilt, or an error naming the file")
    # a study-grade preset (7B models, OCT-scale counts): the cell refuses to start without a CUDA GPU and names
    # the preset's `_cpu` twin instead
    requires_gpu: bool = setting(False, execution="a guard on where a cell may run, not what it builds")
