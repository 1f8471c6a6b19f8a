"""capability: general capability of one evaluated model, lm-eval tasks on it (emrobust/measures/capability.py).

A node beside each `sample` node, on the same model (the EM adapter at a step or at the end, or the starting
model), so its key is that model's (upstream keys, step) with the tasks (`eval.capability`; our tasks' sha256, the
lm-eval version for lm-eval's own): adding a task never samples answers again, and the starting model's node is
shared by every cell that starts from it, as `sample@start` is. In an EM cell the starting model's node is the
`reference`: `capability_retained` is the difference paired over the same documents. `evaluate` merges the
numbers into the model's metrics (as it does the probe's), so they are in metrics.json, run.json, the curve along
EM steps and W&B.
"""
from __future__ import annotations

from ..measures import capability
from . import Context, read_jsonl, write_jsonl
from .sample import load_model, step_of

VERSION = 1

READS = ("eval.capability", "eval.n_bootstrap", "base_model.dtype")
CONTENT = {"tasks": lambda cfg: capability.content(cfg.eval.capability)}


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    model, tok, model_key = load_model(ctx)
    m, rows = capability.measure(model, tok, cfg.eval.capability, ctx.seed, cfg.eval.n_bootstrap)
    write_jsonl(ctx.out / "docs.jsonl", rows)
    if "reference" in ctx.inputs:
        m |= capability.retained(rows, read_jsonl(ctx.inputs["reference"] / "docs.jsonl"), cfg.eval.n_bootstrap,
                                 ctx.seed)
    del model
    return {"capability": m, "model_key": model_key, "step": step_of(ctx), "n_docs": len(rows)}
