"""em: LoRA SFT on the corrupted dataset, starting from the persona model (fold output) or the base model.

Confounds removed by construction:
- the starting weights are the persona's: their fingerprint must equal the fold manifest's, checked before
  training and recorded;
- the EM LoRA's initial weights depend only on the EM stage seed: the RNG is reset after loading;
- the chat template used for training is recorded (evaluation uses the same tokenizer and template).
"""
from __future__ import annotations

import json
import shutil

from .. import models, training
from ..data import em_datasets
from . import Context, sub, write_jsonl

VERSION = 1


def key_config(cfg) -> dict:
    rows = em_datasets.load_all(cfg.em_dataset)
    return sub(cfg, "em_dataset", "em_train") | {
        "dataset_sha256": em_datasets.content_hash(rows),
        "lora_target_modules": list(cfg.base_model.lora_target_modules),
    }


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    train_rows, held = em_datasets.split(em_datasets.load_all(cfg.em_dataset), cfg.em_dataset, ctx.seed)
    write_jsonl(ctx.out / "train.jsonl", [{"messages": m} for m in train_rows])
    if held:
        write_jsonl(ctx.out / "heldout.jsonl", [{"messages": m} for m in held])
    start = ctx.model_path()
    tok = models.load_tokenizer(start)
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    start_fp = models.fingerprint(model)
    expected = ctx.manifests["fold"]["fingerprint"] if "fold" in ctx.manifests else None
    if expected is not None and start_fp != expected:
        raise RuntimeError(f"em: starting weights {start_fp[:12]} are not the persona model {expected[:12]}")
    peft_model = training.attach_lora(model, cfg.em_train.lora, cfg.base_model, ctx.seed)
    init_fp = training.adapter_fingerprint(peft_model)
    hist = training.run_sft(peft_model, tok, train_rows, cfg.em_train.optim, ctx.out, ctx.seed, ctx.device)
    peft_model.save_pretrained(ctx.out / "adapter")
    shutil.rmtree(ctx.out / "trainer", ignore_errors=True)
    (ctx.out / "train_log.json").write_text(json.dumps(hist.pop("log_history"), indent=1))
    return {
        "start_model": str(start),
        "start_fingerprint": start_fp,
        "persona": "fold" in ctx.inputs,
        "init_adapter_fingerprint": init_fp,
        "chat_template_sha256": _sha(tok.chat_template or ""),
        "n_train": len(train_rows),
        "n_heldout": len(held),
        "train": hist,
    }


def _sha(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()
