"""The LoRA and the optimizer of a training stage (`distill.*`, `introspection.*`, `em_train.*` each hold one)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schema import setting


@dataclass
class LoraConfig:
    r: int = setting(64, ge=1)
    alpha: int = setting(128, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)
    use_rslora: bool = False
    target_modules: Optional[list[str]] = setting(None, nonempty=True)  # None = base_model.lora_target_modules
    layers_to_transform: Optional[list[int]] = setting(None, ge=0, nonempty=True)
    # model-agnostic single layer: round(layer_fraction * (num_hidden_layers - 1)), used when
    # layers_to_transform is None (em_train=rank1: 0.5, the middle layer as in Model Organisms for EM)
    layer_fraction: Optional[float] = setting(None, ge=0, le=1, when=lambda lo: lo.layers_to_transform is None)


@dataclass
class OptimConfig:
    learning_rate: float = setting(5e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = setting(0.1, ge=0, le=1, when=lambda o: o.warmup_steps <= 0)
    warmup_steps: int = setting(0, ge=0)
    weight_decay: float = setting(0.0, ge=0)
    num_train_epochs: float = setting(1.0, gt=0, when=lambda o: o.max_steps <= 0)
    max_steps: int = setting(-1, ge=1, also={-1: "num_train_epochs decides"})
    per_device_train_batch_size: int = setting(4, ge=1)
    gradient_accumulation_steps: int = setting(8, ge=1)
    max_length: int = setting(1024, ge=1)
    logging_steps: int = setting(1, ge=1, execution="how often the loss is logged")
    save_steps: int = setting(0, ge=0, execution="resumption checkpoints (every N steps, 0 = none); a resumed build "
                                           "ends byte-identical to an uninterrupted one")
    gradient_checkpointing: bool = setting(False, execution="recomputes activations in the backward pass "
                                                            "instead of storing them: the same gradients")
