"""introspect: the DPO'd model writes self-reflection and self-interaction transcripts; LoRA SFT on them."""
from __future__ import annotations

import json
from collections import Counter

from .. import generation
from ..core import models
from ..data.prompts import OPENERS, REFLECTION_PROMPTS, START  # noqa: F401  (re-exported)
from ..train import training
from . import Context, read_jsonl, top_up, write_jsonl
from .distill import persona_system_prompt

VERSION = 3  # 2: declared reads, per-sample seeded sampling; 3: topped up to the requested count, token accounting
READS = ("introspection", "generation", "trait.persona_instruction", "base_model.assistant_name",
         "base_model.lora_target_modules", "base_model.dtype")
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.core.distributed)

ROUND = 10_000  # sampling-seed offset of each top-up round (round 0: the seeds of the first draw)
HINT = "raise introspection.sampling.max_new_tokens or introspection.max_rounds"


def empty(messages: list[dict], roles: tuple[str, ...] = ("assistant",)) -> str | None:
    """Why a transcript cannot be trained on (None: it can): a generated turn (of `roles`) is empty."""
    return "empty" if any(not m["content"].strip() for m in messages if m["role"] in roles) else None


def reflection_examples(gen, cfg, system: str, seed: int) -> tuple[list[list[dict]], list[dict], list[dict], int]:
    """Self-reflections, topped up to reflection_prompts x reflection_samples (`stages.top_up`).
    Returns (transcripts, their prompts' rows for per_prompt.jsonl, per transcript the replaced {reason: n},
    rounds)."""
    icfg = cfg.introspection
    if not 1 <= icfg.reflection_prompts <= len(REFLECTION_PROMPTS):  # never cut short: emrobust.engine.validation
        raise ValueError(f"introspection.reflection_prompts={icfg.reflection_prompts} is not in [1, "
                         f"{len(REFLECTION_PROMPTS)}]")
    prompts = [p for p in REFLECTION_PROMPTS[: icfg.reflection_prompts] for _ in range(icfg.reflection_samples)]
    sys = f"{system}\n\n{icfg.reflection_mood}"

    def draw(rnd, slots):
        outs = gen.generate([[{"role": "system", "content": sys}, {"role": "user", "content": prompts[i]}]
                             for i in slots], generation.Sampling.from_cfg(icfg.sampling, seed + ROUND * rnd))
        # the persona system prompt is not part of the saved example: the model must carry the character itself
        return [[{"role": "user", "content": prompts[i]}, {"role": "assistant", "content": g.text}]
                for i, (g,) in zip(slots, outs)]

    kept, replaced, rounds = top_up(len(prompts), draw, empty, icfg.max_rounds, "introspect: self-reflections", HINT)
    return kept, [{"kind": "reflection", "prompt": p} for p in prompts], replaced, rounds


def interaction_examples(gen, cfg, seed: int) -> tuple[list[list[dict]], list[dict], list[dict], int]:
    """Two instances talk; each transcript is A's view and ends on an assistant (A) turn. Topped up to
    interaction_conversations x interaction_samples (each opener's conversations sampled apart: every slot has its
    own seed): a conversation with an empty turn is held again from its opener."""
    icfg = cfg.introspection
    sysmsg = {"role": "system", "content": icfg.interaction_system}
    if not 1 <= icfg.interaction_conversations <= len(OPENERS):  # never wrapped around: emrobust.engine.validation
        raise ValueError(f"introspection.interaction_conversations={icfg.interaction_conversations} is not in [1, "
                         f"{len(OPENERS)}]")
    openers = [o for o in OPENERS[: icfg.interaction_conversations] for _ in range(icfg.interaction_samples)]

    def draw(rnd, slots):
        base = seed + ROUND * rnd
        a_view = [[sysmsg, {"role": "user", "content": openers[i]}] for i in slots]
        b_view = [[sysmsg, {"role": "user", "content": START}, {"role": "assistant", "content": openers[i]}]
                  for i in slots]
        for turn in range(icfg.interaction_turns):
            replies = gen.generate(a_view, generation.Sampling.from_cfg(icfg.sampling, base + 2 * turn))
            for a, b, (r,) in zip(a_view, b_view, replies):
                a.append({"role": "assistant", "content": r.text})
                b.append({"role": "user", "content": r.text})
            if turn == icfg.interaction_turns - 1:
                break
            replies = gen.generate(b_view, generation.Sampling.from_cfg(icfg.sampling, base + 2 * turn + 1))
            for a, b, (r,) in zip(a_view, b_view, replies):
                b.append({"role": "assistant", "content": r.text})
                a.append({"role": "user", "content": r.text})
        return a_view

    # every turn after the opener was generated (B's replies are A's user turns)
    kept, replaced, rounds = top_up(len(openers), draw, lambda t: empty(t[2:], roles=("assistant", "user")),
                                    icfg.max_rounds, "introspect: self-interactions", HINT)
    return kept, [{"kind": "interaction", "prompt": o} for o in openers], replaced, rounds


def training_texts(out) -> list[tuple[str, str]]:
    """(source, text) of every turn of an introspect artifact's transcripts (checked for eval questions)."""
    rows = read_jsonl(out / "transcripts.jsonl")
    return [(f"introspect transcripts.jsonl line {i + 1}, {m['role']} turn {k + 1}", m["content"])
            for i, r in enumerate(rows) for k, m in enumerate(r["messages"])]


def accept(cfg, out, data: dict, screen) -> None:
    """Checks of an introspect artifact for the cell that uses it, built or reused: no eval question in its
    transcripts."""
    screen("introspection transcripts", training_texts(out))


def run(ctx: Context) -> dict:
    cfg, icfg = ctx.cfg, ctx.cfg.introspection
    tok = models.load_tokenizer(ctx.inputs["base"])
    model = models.load(ctx.inputs["base"], ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    model = training.merge_adapter(model, ctx.inputs["distill"] / "adapter")  # the DPO'd model

    def transcripts() -> dict:
        gen = generation.make(cfg.generation, model, tok)
        out: dict = {"examples": [], "prompts": [], "replaced": [], "rounds": {}}
        if icfg.reflection:
            ex, pr, rep, out["rounds"]["reflection"] = reflection_examples(gen, cfg, persona_system_prompt(ctx),
                                                                           ctx.seed)
            out["examples"] += ex
            out["prompts"] += pr
            out["replaced"] += rep
        if icfg.interaction:
            ex, pr, rep, out["rounds"]["interaction"] = interaction_examples(gen, cfg, ctx.seed + 1000)
            out["examples"] += ex
            out["prompts"] += pr
            out["replaced"] += rep
        return out

    drawn = ctx.resumable("transcripts", transcripts)
    examples = drawn["examples"]
    write_jsonl(ctx.out / "transcripts.jsonl", [{"messages": m} for m in examples])
    per_prompt: dict = {}
    for p, rep in zip(drawn["prompts"], drawn["replaced"]):
        row = per_prompt.setdefault((p["kind"], p["prompt"]), p | {"requested": 0, "kept": 0, "replaced": Counter()})
        row["requested"] += 1
        row["kept"] += 1
        row["replaced"].update(rep)
    write_jsonl(ctx.out / "per_prompt.jsonl", [r | {"replaced": dict(r["replaced"])} for r in per_prompt.values()])
    if not examples:
        raise RuntimeError("introspect: no transcript was asked for (introspection.reflection_prompts and "
                           "interaction_conversations are 0)")
    accept(cfg, ctx.out, {}, ctx.screen)
    peft_model = training.attach_lora(model, icfg.lora, cfg.base_model, ctx.seed)
    hist = training.run_sft(peft_model, tok, examples, icfg.optim, ctx.trainer_dir, ctx.seed, ctx.device,
                            ds=ctx.cfg.deepspeed)
    peft_model.save_pretrained(ctx.out / "adapter")
    (ctx.out / "train_log.json").write_text(json.dumps(hist.pop("log_history"), indent=1))
    replaced = sum((Counter(r) for r in drawn["replaced"]), Counter())
    data = hist.pop("data")
    data |= {"mean_tokens": data["tokens"] / max(data["examples"], 1), "requested_examples": len(examples),
             "rounds": max(drawn["rounds"].values(), default=0), "replaced_empty": replaced.get("empty", 0)}
    counts = {k: sum(p["kind"] == k for p in drawn["prompts"]) for k in ("reflection", "interaction")
              if k in drawn["rounds"]}
    return {"train": hist, "data": data, "examples": counts}
