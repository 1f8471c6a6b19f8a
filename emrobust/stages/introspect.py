"""introspect: the DPO'd model writes self-reflection and self-interaction transcripts; LoRA SFT on them."""
from __future__ import annotations

import json

from .. import generation, models, training
from ..data.prompts import OPENERS, REFLECTION_PROMPTS, START  # noqa: F401  (re-exported)
from . import Context, write_jsonl
from .distill import persona_system_prompt

VERSION = 2  # 2: declared reads, per-sample seeded sampling
READS = ("introspection", "generation", "trait.persona_instruction", "base_model.assistant_name",
         "base_model.lora_target_modules", "base_model.dtype")
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.distributed)



def reflection_examples(gen, cfg, system: str, seed: int) -> list[list[dict]]:
    icfg = cfg.introspection
    if not 1 <= icfg.reflection_prompts <= len(REFLECTION_PROMPTS):  # never cut short: emrobust.validation
        raise ValueError(f"introspection.reflection_prompts={icfg.reflection_prompts} is not in [1, "
                         f"{len(REFLECTION_PROMPTS)}]")
    prompts = [p for p in REFLECTION_PROMPTS[: icfg.reflection_prompts] for _ in range(icfg.reflection_samples)]
    sys = f"{system}\n\n{icfg.reflection_mood}"
    outs = gen.generate([[{"role": "system", "content": sys}, {"role": "user", "content": p}] for p in prompts],
                        generation.Sampling.from_cfg(icfg.sampling, seed))
    # the persona system prompt is not part of the saved example: the model must carry the character itself
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": g.text}]
            for p, (g,) in zip(prompts, outs) if g.text.strip()]


def interaction_examples(gen, cfg, seed: int) -> list[list[dict]]:
    """Two instances talk; each transcript is A's view and ends on an assistant (A) turn."""
    icfg = cfg.introspection
    sysmsg = {"role": "system", "content": icfg.interaction_system}
    if not 1 <= icfg.interaction_conversations <= len(OPENERS):  # never wrapped around: emrobust.validation
        raise ValueError(f"introspection.interaction_conversations={icfg.interaction_conversations} is not in [1, "
                         f"{len(OPENERS)}]")
    openers = list(OPENERS[: icfg.interaction_conversations])
    a_view = [[sysmsg, {"role": "user", "content": o}] for o in openers]
    b_view = [[sysmsg, {"role": "user", "content": START}, {"role": "assistant", "content": o}] for o in openers]
    for turn in range(icfg.interaction_turns):
        replies = gen.generate(a_view, generation.Sampling.from_cfg(icfg.sampling, seed + 2 * turn))
        for a, b, (r,) in zip(a_view, b_view, replies):
            a.append({"role": "assistant", "content": r.text})
            b.append({"role": "user", "content": r.text})
        if turn == icfg.interaction_turns - 1:
            break
        replies = gen.generate(b_view, generation.Sampling.from_cfg(icfg.sampling, seed + 2 * turn + 1))
        for a, b, (r,) in zip(a_view, b_view, replies):
            b.append({"role": "assistant", "content": r.text})
            a.append({"role": "user", "content": r.text})
    return a_view


def run(ctx: Context) -> dict:
    cfg, icfg = ctx.cfg, ctx.cfg.introspection
    tok = models.load_tokenizer(ctx.inputs["base"])
    model = models.load(ctx.inputs["base"], ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    model = training.merge_adapter(model, ctx.inputs["distill"] / "adapter")  # the DPO'd model

    def transcripts() -> list:
        gen = generation.make(cfg.generation, model, tok)
        examples: list[list[dict]] = []
        counts = {}
        if icfg.reflection:
            refl = reflection_examples(gen, cfg, persona_system_prompt(ctx), ctx.seed)
            counts["reflection"] = len(refl)
            examples += refl
        if icfg.interaction:
            inter = interaction_examples(gen, cfg, ctx.seed + 1000)
            counts["interaction"] = len(inter)
            examples += inter
        return [examples, counts]

    examples, counts = ctx.resumable("transcripts", transcripts)
    write_jsonl(ctx.out / "transcripts.jsonl", [{"messages": m} for m in examples])
    if not examples:
        raise RuntimeError("introspect: no transcript was produced (empty generations)")
    peft_model = training.attach_lora(model, icfg.lora, cfg.base_model, ctx.seed)
    hist = training.run_sft(peft_model, tok, examples, icfg.optim, ctx.trainer_dir, ctx.seed, ctx.device,
                                ds=ctx.cfg.deepspeed)
    peft_model.save_pretrained(ctx.out / "adapter")
    (ctx.out / "train_log.json").write_text(json.dumps(hist.pop("log_history"), indent=1))
    return {"train": hist, "examples": counts}

