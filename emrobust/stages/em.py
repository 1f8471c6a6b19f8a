"""em: LoRA SFT on the corrupted dataset, starting from the persona model (fold output) or the base model.

Confounds removed by construction:
- the starting weights are the persona's: their fingerprint must equal the fold manifest's, checked before
  training and recorded;
- the EM LoRA's initial weights depend only on the EM stage seed: the RNG is reset after loading;
- the chat template used for training is recorded (evaluation uses the same tokenizer and template).

Options: `em_train.full_finetune=true` trains every weight and writes `model/` instead of `adapter/`;
`em_control=random_lora` writes a random adapter of the EM adapter's shape and (per module) norm instead of the
trained one (see conf/em_control/random_lora.yaml). Checkpoints (`optim.save_steps`) are written to the store's
checkpoint dir for this key (`ctx.trainer_dir`), which a killed build (preemption, requeue) leaves behind so the
next build resumes from the newest complete one; it is removed once the artifact is complete, and the steps
saved (and the step resumed from) are in the manifest.
"""
from __future__ import annotations

import hashlib
import json

import torch

from .. import models, training
from ..data import em_datasets
from . import Context, write_jsonl

VERSION = 3  # 3: declared reads
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.distributed)

READS = ("em_dataset", "em_train", "em_control", "base_model.lora_target_modules", "base_model.dtype")
CONTENT = {"dataset_sha256": lambda cfg: em_datasets.content_hash(em_datasets.load_all(cfg.em_dataset, cfg.paths))}


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    train_rows, held = em_datasets.split(em_datasets.load_all(cfg.em_dataset, cfg.paths), cfg.em_dataset, ctx.seed)
    write_jsonl(ctx.out / "train.jsonl", [{"messages": m} for m in train_rows])
    if held:
        write_jsonl(ctx.out / "heldout.jsonl", [{"messages": m} for m in held])
    start = ctx.model_path("start")
    tok = models.load_tokenizer(start)
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    start_fp = models.fingerprint(model)
    persona = ctx.manifests["start"].get("stage") == "fold"
    expected = ctx.manifests["start"]["fingerprint"] if persona else None
    if expected is not None and start_fp != expected:
        raise RuntimeError(f"em: starting weights {start_fp[:12]} are not the persona model {expected[:12]}")
    out: dict = {
        "start_model": str(start),
        "start_fingerprint": start_fp,
        "persona": persona,
        "chat_template_sha256": _sha(tok.chat_template or ""),
        "n_train": len(train_rows),
        "n_heldout": len(held),
        "full_finetune": bool(cfg.em_train.full_finetune),
        "control": cfg.em_control.name,
    }
    sft = lambda m: training.run_sft(m, tok, train_rows, cfg.em_train.optim, ctx.trainer_dir, ctx.seed, ctx.device,  # noqa: E731
                                     ds=cfg.deepspeed, packing=cfg.em_train.packing)
    if cfg.em_train.full_finetune:
        training.set_seed(ctx.seed)
        hist = sft(model)
        model.save_pretrained(ctx.out / "model")
        tok.save_pretrained(ctx.out / "model")
        out |= {"init_adapter_fingerprint": None, "end_fingerprint": models.fingerprint(model)}
    else:
        peft_model = training.attach_lora(model, cfg.em_train.lora, cfg.base_model, ctx.seed)
        out["init_adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
        if cfg.em_control.name == "random_lora":
            hist, out["random_lora"] = _random_lora(ctx, peft_model, sft)
        else:
            hist = sft(peft_model)
            out["adapter_norms"] = training.lora_delta_norms(peft_model)
        peft_model.save_pretrained(ctx.out / "adapter")
    out["checkpoints"] = (hist or {}).get("checkpoints", [])
    if hist is not None:
        (ctx.out / "train_log.json").write_text(json.dumps(hist.pop("log_history"), indent=1))
    out["train"] = hist
    return out


def _random_lora(ctx: Context, peft_model, sft) -> tuple[dict | None, dict]:
    """Replace the adapter's weights by a random LoRA whose per-module update norm matches the target."""
    c = ctx.cfg.em_control
    info: dict = {"match": c.match}
    hist = None
    if c.match == "trained":
        init = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
        hist = sft(peft_model)
        target = training.lora_delta_norms(peft_model)
        info["trained_adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
        with torch.no_grad():  # back to the seeded init (A as EM training would start it), then random B
            sd = peft_model.state_dict()
            for k, v in init.items():
                sd[k].copy_(v)
    else:
        target = float(c.target_norm)
    info["target_norms"] = target
    info["norms"] = training.randomize_lora_(peft_model, target, ctx.seed)
    info["adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
    return hist, info


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()
