"""`distill.*`: the DPO stage (teacher = the model under the persona prompt, student = the model itself)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .generation import SamplingConfig
from .schema import setting
from .training import LoraConfig, OptimConfig


@dataclass
class DistillConfig:
    """The DPO stage at OCT's defaults: beta 0.1, lr 5e-5, cosine, warmup 0.1, 1 epoch, LoRA r64/alpha128 on all
    linear layers, NLL coefficient 0.1, max length 1024, global batch 32 (per-device 4 x accumulation 8 x world
    size 1); the teacher and the student sample at temperature 0.7, top_p 0.95, repetition penalty 1.1, 512 new
    tokens."""
    samples_per_question: int = setting(1, ge=1)  # K teacher/student samples per prompt (overridden by total_pairs)
    sampling: SamplingConfig = setting(factory=SamplingConfig)
    require_finished: bool = True  # drop pairs where either answer hit max_new_tokens
    require_final_punctuation: bool = True  # drop pairs where either answer lacks final punctuation
    # a rejected (empty, unfinished, unpunctuated) answer is drawn again until every requested pair is kept
    max_rounds: int = setting(16, ge=1, execution="a budget: rejected samples are drawn again with each round's seed "
                                            "until the count is reached; a build reaches it in the same rounds with "
                                            "the same samples whatever the budget, or fails and writes nothing")
    # optional chat JSONL of extra general prompts (first user turn each)
    general_prompts: Optional[str] = setting(None, location="the prompts' sha256 is in the distill key")
    n_general_prompts: Optional[int] = setting(None, ge=1, when=lambda d: bool(d.general_prompts))  # the first N
    beta: float = setting(0.1, gt=0)
    nll_weight: float = setting(0.1, ge=0)  # NLL on chosen (OCT's nll coefficient), TRL loss_type=["sigmoid", "sft"]
    lora: LoraConfig = setting(factory=LoraConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
