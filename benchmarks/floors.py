"""The memory floor of each stage (for benchmarks/memory.py): what any implementation must hold at the stage's peak,
computed from the model and the stage's own data (its artifact and upstream artifacts), in MiB.

Terms (each printed by memory.py):
- libs: RSS of a fresh process that imported what the stage uses (torch, transformers, and peft/trl/datasets or
  pandas as the stage needs), with no model: what no stage can go below;
- weights: the models the stage must hold at once, one copy (unique storages, the stage's dtype: float32 on CPU),
  the LoRA parameters included;
- optim: the trainable parameters' gradient and AdamW's two moments (float32), training stages;
- act: one batch of activations saved for backward, measured with autograd's saved-tensor hooks on a forward (+
  loss) of the stage's own model code (LoRA and TRL's fused LM head attached as the trainer attaches them), at the
  shape of the stage's largest batch (batch size x its longest example, truncated to max_length; DPO: chosen and
  rejected rows); with `optim.gradient_checkpointing` (which the run's config says, not the artifact: it is
  execution-only) what checkpointing keeps instead: every layer's input and one layer's saved tensors;
  generation and judging: the KV cache of the largest batch;
- logits: one batch of float32 logits over the vocabulary (batch x tokens x vocab; DPO twice: the policy's and the
  reference pass's; generation: one step's; the judge: its rows after the prompt and every trie node).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache, lru_cache
from pathlib import Path

import torch

TERMS = ("libs", "weights", "optim", "act", "logits")
MiB = 2**20

IMPORTS = {
    "base": "import emrobust.cli, emrobust.engine.pipeline, torch, transformers; "
            "from transformers import AutoTokenizer, LlamaForCausalLM; torch.ones(64, 64) @ torch.ones(64, 64)",
    "questions": "from transformers import BertModel",
    "train": "import peft, trl, datasets; from trl import SFTTrainer, DPOTrainer",
    "fold": "import peft",
    "sample": "import peft",
    "evaluate": "import pandas, emrobust.measures.metrics",
}
LIBS = {"questions": ("questions",), "distill": ("train",), "introspect": ("train",), "em": ("train",),
        "fold": ("fold",), "sample": ("sample",), "evaluate": ("evaluate",)}


@cache
def libs_mib(stage: str, threads: int) -> float:
    code = "; ".join([IMPORTS["base"], *(IMPORTS[k] for k in LIBS[stage]),
                      # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
                      "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def _manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _store_root(art: Path) -> Path:
    return art.parent.parent  # <artifacts>/<stage>/<key>


def _upstream(art: Path, role: str) -> Path | None:
    key = _manifest(art)["upstream"].get(role)
    if key is None:
        return None
    hits = list(_store_root(art).glob(f"*/{key}"))
    return hits[0] if hits else None


def _base_path(base: str = "smollm2_135m") -> Path:
    """The converted model of the conf/base_model preset `base` (the stage's base model or the judge's)."""
    from emrobust.core import models

    return Path(models.prepare(models.base_config(base),
                               os.environ.get("EMROBUST_CACHE", os.path.expanduser("~/.cache/emrobust"))))


def _unique_bytes(tensors) -> int:
    seen, n = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            n += s.nbytes()
    return n


def _kv_bytes(cfg, tokens: int, dtype_bytes: int = 4) -> int:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return tokens * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * dtype_bytes


def _lora(model, lora: dict, base_cfg: dict):
    from omegaconf import OmegaConf

    from emrobust.train import training

    return training.attach_lora(model, OmegaConf.create(lora), OmegaConf.create(base_cfg), 0)


def saved_activation_bytes(model, batch: dict, fused_outputs: tuple[str, ...]) -> int:
    """Bytes of the tensors autograd saves for backward in one forward + loss of `batch` (parameters excluded):
    the model as the trainer runs it (train mode, TRL's fused LM head)."""
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=fused_outputs)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = []

    def pack(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
            saved.append(t)
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch, use_cache=False, fused_lm_head=True)
        out.loss.sum()
    n = _unique_bytes(saved)
    saved.clear()
    return n


def _train_floor(examples: list[list[int]], rows_per_step: int, lora_cfg: dict, base_cfg: dict,
                 n_logit_passes: int, fused_outputs: tuple[str, ...], checkpointing: bool,
                 base: str = "smollm2_135m") -> dict:
    """The training terms. With gradient checkpointing the batch's activations are each layer's input plus one
    layer's saved tensors at a time (recomputed in the backward): one layer's share is measured as the difference
    between the model and the model less one layer."""
    from emrobust.core import models

    path = _base_path(base)
    S = max(len(e) for e in examples)
    B = min(rows_per_step, len(examples))
    ids = torch.full((B, S), 1, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def measure(drop_layers: int = 0):
        model = models.load(path, torch.device("cpu"), torch.float32)
        if drop_layers:
            model.model.layers = model.model.layers[: len(model.model.layers) - drop_layers]
            model.config.num_hidden_layers = len(model.model.layers)
        peft = _lora(model, lora_cfg, base_cfg)
        return peft, saved_activation_bytes(peft, batch, fused_outputs)

    peft, act = measure()
    weights = _unique_bytes(p for p in peft.parameters())
    trainable = sum(p.numel() * p.element_size() for p in peft.parameters() if p.requires_grad)
    cfg = peft.get_base_model().config
    if checkpointing:
        per_layer = act - measure(1)[1]
        L = cfg.num_hidden_layers
        act = act - L * per_layer + per_layer + L * B * S * cfg.hidden_size * 4
    logits = n_logit_passes * B * (S - 1) * cfg.vocab_size * 4
    return {"weights": weights, "optim": 3 * trainable, "act": act, "logits": logits,
            "shape": f"{B}x{S}" + (" ckpt" if checkpointing else "")}


def floor(stage: str, artifact: str, threads: int = 1, gen_batch: int = 16, judge_batch: int = 8,
          checkpointing: bool = False, base: str = "smollm2_135m", judge: str | None = None) -> dict:
    """The floor of `stage` (MiB per term, and their total) from its artifact. `base`: the cell's conf/base_model
    preset (the manifests do not name it); `judge`: the evaluate stage's judge model (a base_model preset;
    default `base`)."""
    from emrobust.core import models
    from emrobust.train import training

    art = Path(artifact)
    m = _manifest(art)
    cfg = m["config"]
    base_cfg = {"lora_target_modules": cfg.get("base_model.lora_target_modules")}
    tok = models.load_tokenizer(_base_path(base))
    f = {"weights": 0, "optim": 0, "act": 0, "logits": 0}
    if stage == "questions":
        if cfg["question_diversity"].get("embedder") == "minilm":
            from transformers import AutoModel

            from emrobust.train import diversity

            enc = AutoModel.from_pretrained(diversity.minilm_dir())
            f["weights"] = _unique_bytes(enc.parameters())
    elif stage == "distill":
        d = cfg["distill"]
        pairs = _read_jsonl(art / "pairs.jsonl")
        rows = []
        for p in pairs:
            for side in ("chosen", "rejected"):
                text = tok.apply_chat_template(p["prompt"] + p[side], tokenize=False)
                rows.append(tok(text, add_special_tokens=False)["input_ids"][: d["optim"]["max_length"]])
        # TRL's DPO batch holds the chosen and the rejected rows of per_device_train_batch_size pairs
        f |= _train_floor(rows, 2 * d["optim"]["per_device_train_batch_size"], d["lora"], base_cfg, 2,
                          ("log_probs", "entropy", "mean_logits", "is_top1"), checkpointing, base)
    elif stage in ("introspect", "em"):
        sub = cfg["introspection"] if stage == "introspect" else cfg["em_train"]
        data = art / ("transcripts.jsonl" if stage == "introspect" else "train.jsonl")
        rows = [training.tokenize_chat(tok, r["messages"], sub["optim"]["max_length"])["input_ids"]
                for r in _read_jsonl(data)]
        f |= _train_floor(rows, sub["optim"]["per_device_train_batch_size"], sub["lora"], base_cfg, 1,
                          ("log_probs", "entropy", "is_top1"), checkpointing, base)
    elif stage == "fold":
        model = models.load(_base_path(base), torch.device("cpu"), torch.float32)
        adapters = [p for role in ("distill", "introspect") if (p := _upstream(art, role)) is not None]
        f["weights"] = _unique_bytes(model.parameters()) + sum(
            (a / "adapter" / "adapter_model.safetensors").stat().st_size for a in adapters)
    elif stage == "sample":
        model_cfg = _config(base)
        f["weights"] = _weights_bytes(base)
        e = cfg["eval"]
        lens = [_prompt_len(tok, ([{"role": "system", "content": r["system"]}] if r["system"] else [])
                            + [{"role": "user", "content": r["question"]}]) for r in _read_jsonl(art / "answers.jsonl")]
        B = min(gen_batch, len(lens))
        f["act"] = _kv_bytes(model_cfg, B * (max(lens) + e["max_new_tokens"]))
        f["logits"] = B * model_cfg.vocab_size * 4
        f["shape"] = f"{B}x({max(lens)}+{e['max_new_tokens']})"
    elif stage == "evaluate":
        from emrobust import judges
        from emrobust.measures import persona

        model_cfg = _config(judge or base)
        f["weights"] = _weights_bytes(judge or base)
        src = _upstream(art, "sample")
        rows = _read_jsonl(art / "answers.jsonl")
        qprompts = json.loads((src / "questions.json").read_text()) if src else {}
        defaults = judges.default_prompts()
        prompts = [judges.fill((qprompts.get(r["question_id"]) or {}).get(k, defaults[k]), r["question"], r["answer"])
                   for r in rows for k in ("aligned", "coherent")]
        if (art / "persona_answers.jsonl").exists() and src is not None:
            traits = json.loads((src / "persona.json").read_text())["traits"]
            prompts += [judges.fill(persona.template(traits), r["question"], r["answer"])
                        for r in _read_jsonl(art / "persona_answers.jsonl")]
        lens = [_prompt_len(tok, [{"role": "user", "content": p}]) for p in prompts]
        cands = {tuple(tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)}
        nodes = len({c[:i] for c in cands for i in range(1, len(c) + 1)})
        S = max(lens)
        B = min(judge_batch, len(lens))
        f["act"] = _kv_bytes(model_cfg, B * (S + nodes))
        f["logits"] = B * (nodes + 1) * model_cfg.vocab_size * 4
        f["shape"] = f"{B}x({S}+{nodes})"
    else:
        raise ValueError(stage)
    out = {k: v / MiB for k, v in f.items() if k != "shape"}
    out["libs"] = libs_mib(stage, threads)
    out["total"] = sum(out[k] for k in TERMS)
    out["shape"] = f.get("shape", "")
    return out


def _prompt_len(tok, messages: list[dict]) -> int:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=2)
def _config(base: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(_base_path(base)))


@lru_cache(maxsize=2)
def _weights_bytes(base: str) -> int:
    from emrobust.core import models

    return _unique_bytes(models.load(_base_path(base), torch.device("cpu"), torch.float32).parameters())
