"""`em_train=<preset>` (conf/em_train/): how EM training trains."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from omegaconf import MISSING

from .schema import setting
from .training import LoraConfig, OptimConfig


class Packing(StrEnum):
    none = "none"  # padded batches
    padding_free = "padding_free"  # each batch flattened into one row with position_ids (same steps)
    bfd = "bfd"  # TRL packing, best-fit decreasing into rows of optim.max_length (fewer, fuller steps)


@dataclass
class EmTrainConfig:
    """EM training at Betley et al.'s recipe (the defaults, em_train=betley): rsLoRA r32/alpha64, dropout 0, all
    linear layers, lr 1e-5 linear, 5 warmup steps, weight decay 0.01, 1 epoch, effective batch 16 (2 x 8), max
    length 2048. The other presets (conf/em_train/) set only what differs from it."""
    name: str = setting(MISSING, label="the preset's name; the training is the fields below")
    full_finetune: bool = False  # true: train every weight (no LoRA; `lora` is ignored), save model/ not adapter/
    lora: LoraConfig = setting(factory=lambda: LoraConfig(r=32, alpha=64, use_rslora=True),
                               when=lambda e: not e.full_finetune)
    optim: OptimConfig = setting(
        factory=lambda: OptimConfig(
            learning_rate=1e-5, lr_scheduler_type="linear", warmup_ratio=0.0, warmup_steps=5,
            weight_decay=0.01, per_device_train_batch_size=2, gradient_accumulation_steps=8, max_length=2048,
        )
    )
    packing: Packing = Packing.none  # how SFT batches are laid out (TRL); see Packing
    # keep the adapter every N optimizer steps (steps/<N>/ in the em artifact; 0 = only the final one): the grid
    # `eval.at_steps` evaluates along EM training. Part of the em key (unlike optim.save_steps, for resumption)
    checkpoint_every: int = setting(0, ge=0)
    # the em stage fails when more than this share of the training examples has no assistant token within
    # optim.max_length (they would be dropped)
    max_drop_share: float = setting(0.05, ge=0, le=1, execution="a check: a build that passes it is the same build whatever "
                                                    "the share; a reused artifact is checked against the cell's share")
