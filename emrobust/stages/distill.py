"""distill: teacher (persona system prompt) answers = chosen, student (no system prompt) = rejected; LoRA DPO."""
from __future__ import annotations

import json

from .. import generation, models, training
from ..data import chat, constitutions
from ..store import stable_hash
from . import Context, read_jsonl, write_jsonl

VERSION = 2  # 2: declared reads, per-sample seeded sampling
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.distributed)
FINAL_PUNCT = tuple('.!?"\')]*`…')

READS = ("distill", "trait.persona_instruction", "base_model.assistant_name", "base_model.lora_target_modules",
         "base_model.dtype", "generation")
# the general prompts themselves, not where the user keeps the file
CONTENT = {"general_prompts_sha256": lambda cfg: stable_hash(general_prompts(cfg), 64) if cfg.distill.general_prompts
           else None}


def general_prompts(cfg) -> list[str]:
    """The optional extra general prompts (`distill.general_prompts`, a chat JSONL: first user turn each)."""
    if not cfg.distill.general_prompts:
        return []
    ps = chat.read_first_user_turns(cfg.distill.general_prompts)
    n = cfg.distill.n_general_prompts
    return ps[:n] if n else ps


def persona_system_prompt(ctx: Context) -> str:
    const = json.loads((ctx.inputs["questions"] / "constitution.json").read_text())
    c = constitutions.Constitution(const["name"], [constitutions.Trait(t, []) for t in const["traits"]], "")
    return constitutions.persona_prompt(c, ctx.cfg.trait.persona_instruction, ctx.cfg.base_model.assistant_name)


def keep(gen, cfg) -> bool:
    if cfg.require_finished and not gen.finished:
        return False
    if cfg.require_final_punctuation and not gen.text.rstrip().endswith(FINAL_PUNCT):
        return False
    return bool(gen.text.strip())


def make_pairs(prompts: list[str], teacher, student, dcfg) -> tuple[list[dict], int]:
    """DPO pairs (chosen = teacher, rejected = student), dropping a pair when either answer is empty, unfinished
    (hit max_new_tokens) or lacks final punctuation (the last two as configured). Returns (pairs, dropped)."""
    pairs, dropped = [], 0
    for p, (t,), (s,) in zip(prompts, teacher, student, strict=True):
        if keep(t, dcfg) and keep(s, dcfg):
            pairs.append({"prompt": [{"role": "user", "content": p}],
                          "chosen": [{"role": "assistant", "content": t.text}],
                          "rejected": [{"role": "assistant", "content": s.text}]})
        else:
            dropped += 1
    return pairs, dropped


def run(ctx: Context) -> dict:
    cfg, dcfg = ctx.cfg, ctx.cfg.distill
    tok = models.load_tokenizer(ctx.inputs["base"])
    model = models.load(ctx.inputs["base"], ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    system = persona_system_prompt(ctx)
    qs = read_jsonl(ctx.inputs["questions"] / "questions.jsonl")
    prompts = [q["question"] for q in qs for _ in range(q["samples"])]
    extra = general_prompts(cfg)
    prompts += [p for p in extra for _ in range(dcfg.samples_per_question)]

    def sample_pairs() -> list:
        gen = generation.make(cfg.generation, model, tok)
        teacher = gen.generate([[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in prompts],
                               generation.Sampling.from_cfg(dcfg.sampling, ctx.seed))
        student = gen.generate([[{"role": "user", "content": p}] for p in prompts],
                               generation.Sampling.from_cfg(dcfg.sampling, ctx.seed + 1))
        return list(make_pairs(prompts, teacher, student, dcfg))

    pairs, dropped = ctx.resumable("pairs", sample_pairs)
    write_jsonl(ctx.out / "pairs.jsonl", pairs)
    if not pairs:
        raise RuntimeError(
            f"distill: all {len(prompts)} teacher/student pairs were dropped as unfinished or without final "
            "punctuation; raise distill.sampling.max_new_tokens or relax distill.require_* filters")
    ctx.log.info("DPO on %d pairs (%d dropped)", len(pairs), dropped)
    peft_model = training.attach_lora(model, dcfg.lora, cfg.base_model, ctx.seed)
    hist = training.run_dpo(peft_model, tok, pairs, dcfg, ctx.trainer_dir, ctx.seed, ctx.device, ds=ctx.cfg.deepspeed)
    peft_model.save_pretrained(ctx.out / "adapter")
    (ctx.out / "train_log.json").write_text(json.dumps(hist["log_history"], indent=1))
    hist.pop("log_history")
    return {"train": hist, "pairs_kept": len(pairs), "pairs_dropped": dropped, "system_prompt": system,
            "general_prompts": len(extra)}
