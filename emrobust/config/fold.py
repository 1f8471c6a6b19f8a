"""`fold.*`: how the DPO and the introspection adapters become the persona."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .schema import Rule, setting


class Combination(StrEnum):
    peft_linear = "peft_linear"  # OCT's merge: PEFT add_weighted_adapter(combination_type="linear"), cross terms
    exact = "exact"  # the weighted sum of the two updates, w_dpo dW_dpo + w_sft dW_sft


@dataclass
class FoldConfig:
    """How the fold stage combines the DPO and the introspection (SFT) adapters into the persona (keyed only when
    the cell introspects: `introspection=none` folds the DPO adapter alone, at weight 1). The default is OCT's
    released personas (tools/merge_loras.py): PEFT's `add_weighted_adapter(["dpo", "sft"], [1.0, 0.25],
    combination_type="linear")`, which scales each A and B by sqrt(weight * scaling) and sums them, so its update is
    w_dpo dW_dpo + w_sft dW_sft plus the cross terms sqrt(w_dpo s_dpo w_sft s_sft) (B_dpo A_sft + B_sft A_dpo);
    `exact` is the weighted sum without them."""
    combination: Combination = Combination.peft_linear
    dpo_weight: float = setting(1.0, ge=0, le=2)
    introspection_weight: float = setting(0.25, ge=0, le=2)


def introspects(c) -> bool:
    """Does the cell fold an introspection adapter (a persona with introspection other than none)?"""
    return c.trait.name != "none" and bool(c.introspection.reflection or c.introspection.interaction)


def _peft_linear(c) -> str | None:
    """fold.combination=peft_linear sums the two adapters' A and B matrices (PEFT's add_weighted_adapter "linear"):
    they must have one shape, and PEFT gives the result the DPO adapter's config."""
    if not introspects(c) or c.fold.combination != "peft_linear":
        return None
    d, i = c.distill.lora, c.introspection.lora
    if d.r != i.r:
        return (f"combination=peft_linear needs equal DPO and SFT LoRA ranks, got distill.lora.r={d.r} and "
                f"introspection.lora.r={i.r}; set them equal or use fold.combination=exact")
    if d.use_rslora or i.use_rslora:
        return ("combination=peft_linear with use_rslora: PEFT's merge copies use_rslora with lora_alpha=r, which "
                "scales the merged update by sqrt(r); use fold.combination=exact")
    if (list(d.layers_to_transform or []), d.layer_fraction) != (list(i.layers_to_transform or []), i.layer_fraction):
        return ("combination=peft_linear needs the DPO and SFT LoRAs on the same layers (PEFT's merge keeps the DPO "
                "adapter's layers and drops the SFT update elsewhere); use fold.combination=exact")
    return None


RULES = (Rule("fold.combination", _peft_linear),)
