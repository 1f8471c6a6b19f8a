"""distill: teacher (persona system prompt) answers = chosen, student (no system prompt) = rejected; LoRA DPO."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from .. import generation
from ..core import models
from ..core.store import stable_hash
from ..data import chat, constitutions
from ..train import diversity, training
from . import Context, read_jsonl, record_diversity, top_up, write_jsonl

# 2: declared reads, per-sample seeded sampling; 3: topped up to the requested pairs, token accounting,
# question_diversity.token_budget, diversity measured on the trained questions
record = record_diversity  # run.json keeps the diversity of the questions trained on
VERSION = 3
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.core.distributed)
FINAL_PUNCT = tuple('.!?"\')]*`…')

READS = ("distill", "question_diversity.token_budget", "trait.persona_instruction", "base_model.assistant_name",
         "base_model.lora_target_modules", "base_model.dtype", "generation")
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


def reject(gen, cfg) -> str | None:
    """Why an answer cannot be half of a DPO pair (None: it can): empty, unfinished (hit max_new_tokens) or
    without final punctuation (the last two as configured)."""
    if not gen.text.strip():
        return "empty"
    if cfg.require_finished and not gen.finished:
        return "unfinished"
    if cfg.require_final_punctuation and not gen.text.rstrip().endswith(FINAL_PUNCT):
        return "no_final_punctuation"
    return None


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


HINT = ("raise distill.sampling.max_new_tokens, relax distill.require_finished/require_final_punctuation, or "
        "raise distill.max_rounds")


def sample_pairs(prompts: list[str], system: str, gen, dcfg, seed: int) -> dict:
    """One DPO pair per prompt, topped up to all of them (`stages.top_up`): the teacher (persona system prompt)
    and the student (none) each answer every prompt; a rejected answer is drawn again, on its side only, with the
    next round's seed (teacher seed + 2 * round, student seed + 1 + 2 * round; round 0 is the first draw). Teacher
    and student answers are independent draws, so redrawing only the rejected side gives each side the
    distribution of its own accepted answers, as redrawing the whole pair would.
    Returns {"pairs", "replaced": per prompt {"teacher": {reason: n}, "student": ...}, "rounds"}."""
    def side(messages, offset):
        def draw(rnd, slots):
            outs = gen.generate([messages(prompts[i]) for i in slots],
                                generation.Sampling.from_cfg(dcfg.sampling, seed + offset + 2 * rnd))
            return [g for (g,) in outs]
        return draw

    teacher = side(lambda p: [{"role": "system", "content": system}, {"role": "user", "content": p}], 0)
    student = side(lambda p: [{"role": "user", "content": p}], 1)
    t, t_rep, t_rounds = top_up(len(prompts), teacher, lambda g: reject(g, dcfg), dcfg.max_rounds,
                                "distill: teacher answers", HINT)
    s, s_rep, s_rounds = top_up(len(prompts), student, lambda g: reject(g, dcfg), dcfg.max_rounds,
                                "distill: student answers", HINT)
    return {"pairs": [pair(p, a.text, b.text) for p, a, b in zip(prompts, t, s)],
            "replaced": [{"teacher": a, "student": b} for a, b in zip(t_rep, s_rep)],
            "rounds": max(t_rounds, s_rounds)}


def subsample_to_budget(tokens: list[int], budget: int, seed: int) -> list[int]:
    """Indices (sorted) of a seeded random subset whose tokens reach `budget` without passing it: pairs in a
    seeded random order, taken until the next one would pass the budget, so the total is within one pair's
    tokens of it. Independent of every other cell. ValueError when all of them together fall short."""
    total = sum(tokens)
    if total < budget:
        raise ValueError(f"{total} < {budget}")
    order = np.random.default_rng([seed, 1]).permutation(len(tokens))
    taken, acc = [], 0
    for i in order:
        if acc + tokens[i] > budget:
            break
        taken.append(int(i))
        acc += tokens[i]
    return sorted(taken)


def within_budget(tok, pairs: list[dict], budget: int, max_length: int, seed: int) -> list[int]:
    """`subsample_to_budget` on the pairs' training tokens (chosen + rejected as the DPO trainer will train them)."""
    tokens = [t["chosen"] + t["rejected"] for t in (training.dpo_tokens(tok, p, max_length) for p in pairs)]
    try:
        return subsample_to_budget(tokens, budget, seed)
    except ValueError:
        raise RuntimeError(
            f"distill: question_diversity.token_budget={budget} but this cell's {len(pairs)} pairs hold "
            f"{sum(tokens)} training tokens (chosen + rejected at distill.optim.max_length={max_length}); lower the "
            "budget (one for every cell the experiment compares) or raise question_diversity.total_pairs") from None


def per_question(prompts: list[str], slots: list[int | None], qs: list[dict], replaced: list[dict],
                 trained: set[int]) -> list[dict]:
    """One row per prompt (a selected question, or a general prompt): pairs requested, kept (all of them, after
    top-up), trained on (after the token budget), and the answers replaced by side and reason."""
    rows: dict = {}
    for i, (j, rep) in enumerate(zip(slots, replaced)):
        row = rows.setdefault(("question", j) if j is not None else ("general", prompts[i]), {
            "question": prompts[i], "trait": qs[j]["trait"] if j is not None else None, "requested": 0, "kept": 0,
            "trained": 0, "replaced_teacher": Counter(), "replaced_student": Counter()})
        row["requested"] += 1
        row["kept"] += 1
        row["trained"] += i in trained
        row["replaced_teacher"].update(rep["teacher"])
        row["replaced_student"].update(rep["student"])
    return [r | {"replaced_teacher": dict(r["replaced_teacher"]), "replaced_student": dict(r["replaced_student"])}
            for r in rows.values()]


def training_texts(out) -> list[tuple[str, str]]:
    """(source, text) of the generated answers in a distill artifact (checked for eval questions)."""
    rows = read_jsonl(out / "pairs.jsonl")
    return [(f"distill pairs.jsonl line {i + 1}, {side}", r[side][-1]["content"])
            for i, r in enumerate(rows) for side in ("chosen", "rejected")]


def accept(cfg, out, data: dict, screen) -> None:
    """Checks of a distill artifact for the cell that uses it, built or reused: no eval question in its answers."""
    screen("distill answers", training_texts(out))


def trained_diversity(questions_dir, slots: list[int | None], trained: list[int], qs: list[dict]) -> dict:
    """The diversity measures of the selected questions that are trained on (at least one pair kept after top-up
    and the token budget), on the questions stage's own embeddings; and the pairs of those questions."""
    emb = np.load(questions_dir / "embeddings.npy")
    n_traits = len(json.loads((questions_dir / "constitution.json").read_text())["traits"])
    strategy = json.loads((questions_dir / "diversity.json").read_text()).get("strategy")
    counts = Counter(slots[i] for i in trained if slots[i] is not None)
    idx = sorted(counts)
    out = diversity.measure([qs[i]["question"] for i in idx], [qs[i]["trait"] for i in idx], emb[idx], n_traits)
    return out | {"total_pairs": sum(counts.values()), "strategy": strategy, "measured_on": "trained"}


def run(ctx: Context) -> dict:
    cfg, dcfg = ctx.cfg, ctx.cfg.distill
    tok = models.load_tokenizer(ctx.inputs["base"])
    model = models.load(ctx.inputs["base"], ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    system = persona_system_prompt(ctx)
    qs = read_jsonl(ctx.inputs["questions"] / "questions.jsonl")
    slots: list[int | None] = [j for j, q in enumerate(qs) for _ in range(q["samples"])]  # question of each pair
    prompts = [qs[j]["question"] for j in slots]
    extra = general_prompts(cfg)
    slots += [None] * (len(extra) * dcfg.samples_per_question)
    prompts += [p for p in extra for _ in range(dcfg.samples_per_question)]

    drawn = ctx.resumable("pairs", lambda: sample_pairs(prompts, system, generation.make(cfg.generation, model, tok),
                                                        dcfg, ctx.seed))
    pairs = drawn["pairs"]
    budget = cfg.question_diversity.token_budget
    trained = within_budget(tok, pairs, budget, dcfg.optim.max_length, ctx.seed) if budget else list(range(len(pairs)))
    write_jsonl(ctx.out / "pairs.jsonl", [pairs[i] for i in trained])
    write_jsonl(ctx.out / "per_question.jsonl", per_question(prompts, slots, qs, drawn["replaced"], set(trained)))
    replaced = sum((Counter(r["teacher"]) + Counter(r["student"]) for r in drawn["replaced"]), Counter())
    accept(cfg, ctx.out, {}, ctx.screen)
    measured = trained_diversity(ctx.inputs["questions"], slots, trained, qs)
    ctx.log.info("DPO on %d pairs (%d answers replaced in %d rounds, %d pairs left out by the token budget)",
                 len(trained), sum(replaced.values()), drawn["rounds"], len(pairs) - len(trained))
    peft_model = training.attach_lora(model, dcfg.lora, cfg.base_model, ctx.seed)
    hist = training.run_dpo(peft_model, tok, [pairs[i] for i in trained], dcfg, ctx.trainer_dir, ctx.seed,
                            ctx.device, ds=ctx.cfg.deepspeed)
    peft_model.save_pretrained(ctx.out / "adapter")
    (ctx.out / "train_log.json").write_text(json.dumps(hist["log_history"], indent=1))
    hist.pop("log_history")
    data = hist.pop("data")
    data |= {"mean_chosen_tokens": data["chosen_tokens"] / max(data["pairs"], 1),
             "mean_rejected_tokens": data["rejected_tokens"] / max(data["pairs"], 1),
             "requested_pairs": len(pairs), "rounds": drawn["rounds"],
             **{f"replaced_{k}": replaced.get(k, 0) for k in ("empty", "unfinished", "no_final_punctuation")},
             "token_budget": budget, "dropped_token_budget": len(pairs) - len(trained)}
    return {"train": hist, "data": data, "diversity": measured, "pairs_kept": len(pairs), "system_prompt": system,
            "general_prompts": len(extra)}
