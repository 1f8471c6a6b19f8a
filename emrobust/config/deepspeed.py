"""`deepspeed=<preset>` (conf/deepspeed/): how the TRL trainers shard a multi-process job."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import Rule, setting

_ZERO = "how the optimizer state, gradients and weights are sharded over the job's processes; the maths is DDP's"


@dataclass
class DeepSpeedConfig:
    """`deepspeed=none|zero2|zero3`: how the TRL trainers shard a multi-process (multi-GPU) job."""
    name: str = setting("none", execution=_ZERO)
    stage: int = setting(0, ge=0, le=3, execution=_ZERO)  # 0 = no DeepSpeed (plain Trainer; DDP when several processes)
    offload_optimizer: bool = setting(False, execution=_ZERO)
    offload_param: bool = setting(False, execution=_ZERO)  # ZeRO-3 only
    overlap_comm: bool = setting(False, execution=_ZERO)


RULES = (
    Rule("deepspeed.offload_param", lambda c: (
        "offload_param needs ZeRO stage 3 (deepspeed=zero3)" if c.deepspeed.offload_param and c.deepspeed.stage != 3
        else None)),
)
