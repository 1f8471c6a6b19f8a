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
def max_abs_diff(combined_peft, base_weight) -> float:
    """Largest |W_fold - (W0 + dW_combined)| over the combined adapter's modules. `combined_peft` is the combined
    adapter over the folded model (its base layers hold W_fold); `base_weight(module name)` is W0, the base model's
    weight of that module in the stage's dtype."""
    from peft.tuners.lora import LoraLayer

    worst = 0.0
    for name, m in combined_peft.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.lora_A:
            w = base_weight(name.removeprefix("base_model.model.")).float() + m.scaling["default"] * (
                m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float())
            worst = max(worst, float((w - m.get_base_layer().weight.float()).abs().max()))
    return worst


def base_weights(ctx: Context, dt: torch.dtype):
    """W0 of a module, by module name: read one tensor at a time from the base model's files (the fold holds one
    model, not two), or, for a checkpoint whose keys are not the module names, from a second loaded copy."""
    read = models.weight_reader(ctx.inputs["base"])
    second = []

    def weight(module: str) -> torch.Tensor:
        t = read(f"{module}.weight") if not second else None
        if t is None:
            if not second:
                second.append(models.load(ctx.inputs["base"], ctx.device, dt))
            return second[0].get_submodule(module).weight
        return t.to(device=ctx.device, dtype=dt)

    return weight


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
    # the combined adapter's weights come from the adapter files alone; wrapping the folded model (rather than a
    # second copy of the base) lets the check compare it with the folded weights without a second model
    combined = training.combine_adapters(model, adapters)
    combined.save_pretrained(ctx.out / "combined_adapter")
    diff = max_abs_diff(combined, base_weights(ctx, dt))
    rank = combined.peft_config["default"].r
    ctx.log.info("fold: combined adapter (rank %d) matches sequential folding to %.2e", rank, diff)
    return {"fingerprint": fingerprint, "folded": folded,
            "combined_adapter": {"rank": rank, "max_abs_diff_vs_fold": diff}}
