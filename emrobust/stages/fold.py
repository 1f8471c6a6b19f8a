"""fold: merge the DPO then the introspection adapter into the base weights = the persona model."""
from __future__ import annotations

from .. import models, training
from . import Context

VERSION = 1


def key_config(cfg) -> dict:
    return {"dtype": cfg.base_model.dtype}


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    tok = models.load_tokenizer(ctx.inputs["base"])
    model = models.load(ctx.inputs["base"], ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    folded = ["distill"]
    model = training.merge_adapter(model, ctx.inputs["distill"] / "adapter")
    if "introspect" in ctx.inputs:  # sequential, as OCT's fold_loras: SFT was trained on the DPO'd model
        model = training.merge_adapter(model, ctx.inputs["introspect"] / "adapter")
        folded.append("introspect")
    model.save_pretrained(ctx.out / "model")
    tok.save_pretrained(ctx.out / "model")
    return {"fingerprint": models.fingerprint(model), "folded": folded}
