"""fold: merge the DPO and the introspection adapter into the base weights = the persona model.

How the two are combined is `fold.*` (emrobust/config/fold.py, FoldConfig), by default as OCT's released personas
(tools/merge_loras.py): `peft_linear`, PEFT's `add_weighted_adapter(["dpo", "sft"], [1.0, 0.25],
combination_type="linear")`, called here as OCT calls it (`training.linear_combine`), whose update is
w_dpo dW_dpo + w_sft dW_sft plus the cross terms sqrt(w_dpo s_dpo w_sft s_sft) (B_dpo A_sft + B_sft A_dpo);
the persona model is that adapter merged into the base weights. `exact`: the weighted sum of the two updates,
merged one after the other (OCT's fold_loras order: W0 + w_dpo dW_dpo, then + w_sft dW_sft). The manifest records
the combination, the weights, and for `peft_linear` the largest cross-term entry (`cross_terms_max_abs`).
`introspection=none` folds the DPO adapter alone, at weight 1 (the fold settings are then no part of the key).

Also exported, for users who want one adapter: `combined_adapter/`, a single LoRA over the *base* model whose
update is the fold's: PEFT's merged adapter (`peft_linear`, rank r), or (`exact`) the weighted sum of the two
(rank r_dpo + r_sft; `training.combine_adapters`). The manifest records the largest difference between the folded
weights and W0 + the combined adapter's update (only rounding; with bf16 weights sequential folding rounds twice).
What it does not mean: the SFT adapter was trained on the DPO-merged model, so the SFT part alone on the base model
is not a meaningful persona, and the combined adapter on any other base (e.g. an instruct variant) is not this
persona either.
"""
from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from ..config import introspects
from ..core import models
from ..core.keys import Read
from ..train import training
from . import Context

VERSION = 4  # 2: combined_adapter/ and its check; 3: declared reads; 4: fold.* weights and combination (OCT's)
READS = ("base_model.dtype", Read("fold", when=introspects))


@torch.no_grad()
def max_abs_diff(combined_peft, base_weight) -> float:
    """Largest |W_fold - (W0 + dW_combined)| over the combined adapter's modules. `combined_peft` is the combined
    adapter over the folded model (its base layers hold W_fold); `base_weight(module name)` is W0, the base model's
    weight of that module in the stage's dtype."""
    from peft.tuners.lora import LoraLayer  # lazy: slow import

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


@torch.no_grad()
def cross_terms(combined_peft, adapters: list, weights: list[float]) -> float:
    """Largest |dW_combined - sum_i w_i dW_i| over the combined adapter's modules: what PEFT's "linear" adds beyond
    the weighted sum of the updates (its cross terms), read from the adapter files."""
    from peft.tuners.lora import LoraLayer  # lazy: slow import

    parts = []
    for a in adapters:
        cfg = json.loads((a / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
        parts.append((scale, load_file(str(a / "adapter_model.safetensors"))))
    worst = 0.0
    for name, m in combined_peft.named_modules():
        if not (isinstance(m, LoraLayer) and "default" in m.lora_A):
            continue
        d = m.scaling["default"] * (m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float())
        for w, (scale, sd) in zip(weights, parts):
            a, b = sd.get(f"{name}.lora_A.weight"), sd.get(f"{name}.lora_B.weight")
            if a is not None:
                d = d - w * scale * (b.float().to(d.device) @ a.float().to(d.device))
        worst = max(worst, float(d.abs().max()))
    return worst


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    dt = models.dtype_for(cfg.base_model, ctx.device)
    tok = models.load_tokenizer(ctx.inputs["base"])
    folded = ["distill"] + (["introspect"] if "introspect" in ctx.inputs else [])
    adapters = [ctx.inputs[s] / "adapter" for s in folded]
    model = models.load(ctx.inputs["base"], ctx.device, dt)
    if len(adapters) == 1:  # introspection=none: the DPO adapter alone, at weight 1 (fold.* are not keyed)
        combination, weights = None, [1.0]
        how = {"combination": None, "dpo_weight": 1.0, "introspection_weight": None}
    else:
        combination = str(cfg.fold.combination)
        weights = [float(cfg.fold.dpo_weight), float(cfg.fold.introspection_weight)]
        how = {"combination": combination, "dpo_weight": weights[0], "introspection_weight": weights[1]}
    extra: dict = {}
    if combination == "peft_linear":
        # OCT's merge: PEFT's own add_weighted_adapter, then that adapter merged into the base weights
        combined = training.linear_combine(model, adapters, weights)
        combined.save_pretrained(ctx.out / "combined_adapter")
        extra["cross_terms_max_abs"] = cross_terms(combined, adapters, weights)
        model = combined.merge_and_unload()
        ctx.log.info("fold: peft_linear, weights %s; cross terms up to %.2e", weights, extra["cross_terms_max_abs"])
    else:
        # exact, sequential as OCT's fold_loras: SFT was trained on the DPO'd model
        for a, w in zip(adapters, weights):
            model = training.merge_adapter(model, a, w)
    model.save_pretrained(ctx.out / "model")
    tok.save_pretrained(ctx.out / "model")
    fingerprint = models.fingerprint(model)
    # the combined adapter's weights come from the adapter files alone; wrapping the folded model (rather than a
    # second copy of the base) lets the check compare it with the folded weights without a second model
    if combination == "peft_linear":
        from peft import PeftModel  # lazy: slow import

        combined = PeftModel.from_pretrained(model, str(ctx.out / "combined_adapter"))
    else:
        combined = training.combine_adapters(model, adapters, weights)
        combined.save_pretrained(ctx.out / "combined_adapter")
    diff = max_abs_diff(combined, base_weights(ctx, dt))
    rank = combined.peft_config["default"].r
    ctx.log.info("fold: combined adapter (rank %d) matches the folded weights to %.2e", rank, diff)
    return {"fingerprint": fingerprint, "folded": folded, **how,
            "combined_adapter": {"rank": rank, "max_abs_diff_vs_fold": diff, **extra}}
