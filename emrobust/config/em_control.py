"""`em_control=<preset>` (conf/em_control/): a random LoRA of the EM adapter's shape instead of EM training."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from .schema import Rule, setting


class Control(StrEnum):
    none = "none"
    random_lora = "random_lora"


class Match(StrEnum):
    trained = "trained"
    target = "target"


@dataclass
class EmControlConfig:
    # none | random_lora: instead of EM training, apply a LoRA of the same shape (em_train.lora) with random
    # weights whose per-module ||scaling * B @ A||_F matches `match`
    name: Control = Control.none
    # trained: the norms of the EM adapter trained in the same stage | target
    match: Match = setting(Match.trained, when=lambda c: c.name != "none")
    # match=target: every adapted module's ||delta W||_F
    target_norm: Optional[float] = setting(None, gt=0, when=lambda c: c.name != "none" and c.match == "target")


RULES = (
    Rule("em_control.name", lambda c: (
        "em_control=random_lora replaces the em stage, which em_dataset=none skips; pick an em_dataset (its "
        "em_train shape and, with match=trained, its norms are used)"
        if c.em_control.name != "none" and c.em_dataset.name == "none" else None)),
    Rule("em_train.full_finetune", lambda c: (
        "em_control=random_lora needs a LoRA; em_train.full_finetune=true has none"
        if c.em_control.name != "none" and c.em_train.full_finetune else None)),
    Rule("em_control.target_norm", lambda c: (
        "em_control.match=target needs em_control.target_norm (> 0)" if c.em_control.target_norm is None else None)),
)
