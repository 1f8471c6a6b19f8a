"""fold: merge the DPO then the introspection adapter into the base weights = the persona model.

Also exported, for users who want one adapter: `combined_adapter/`, a single LoRA over the *base* model whose
weight update is the sum of the two (rank r_dpo + r_sft; see `training.combine_adapters`). Sequential folding
(OCT's fold_loras) computes W0 + dW_dpo, then + dW_sft; applying the combined adapter computes W0 + (dW_dpo +
dW_sft): the same weights, because LoRA updates add (the manifest records the largest difference found, only
rounding; with bf16 weights sequential folding rounds twice). What it does not mean: the SFT adapter was trained
on the DPO-merged model, so the SFT part alone on the base model is not a meaningful persona, and the combined
adapter on any other base (e.g. an instruct variant) is not this persona either.
"""
from __future__ import annotations

import torch

from .. import models, training
from . import Context

VERSION = 3  # 2: combined_adapter/ and its check; 3: declared reads
READS = ("base_model.dtype",)


@torch.no_grad()
def max_abs_diff(merged, combined_peft) -> float:
    """Largest |W_merged - (W0 + dW_combined)| over the combined adapter's modules."""
    from peft.tuners.lora import LoraLayer

    worst = 0.0
    for name, m in combined_peft.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.lora_A:
            w = m.get_base_layer().weight.float() + m.scaling["default"] * (
                m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float())
            ref = merged.get_submodule(name.removeprefix("base_model.model.")).weight.float()
            worst = max(worst, float((w - ref).abs().max()))
    return worst


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    dt = models.dtype_for(cfg.base_model, ctx.device)
    tok = models.load_tokenizer(ctx.inputs["base"])
    folded = ["distill"] + (["introspect"] if "introspect" in ctx.inputs else [])
    adapters = [ctx.inputs[s] / "adapter" for s in folded]
    model = models.load(ctx.inputs["base"], ctx.device, dt)
    # sequential, as OCT's fold_loras: SFT was trained on the DPO'd model
    for a in adapters:
        model = training.merge_adapter(model, a)
    model.save_pretrained(ctx.out / "model")
    tok.save_pretrained(ctx.out / "model")
    fingerprint = models.fingerprint(model)
    combined = training.combine_adapters(models.load(ctx.inputs["base"], ctx.device, dt), adapters)
    combined.save_pretrained(ctx.out / "combined_adapter")
    diff = max_abs_diff(model, combined)
    ctx.log.info("fold: combined adapter (rank %d) matches sequential folding to %.2e", combined.peft_config["default"].r, diff)
    return {"fingerprint": fingerprint, "folded": folded,
            "combined_adapter": {"rank": combined.peft_config["default"].r, "max_abs_diff_vs_fold": diff}}
