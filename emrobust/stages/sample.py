"""sample: one model's answers to the eval questions (their `system` prompts included) and, for a persona, to
its reserved constitution questions (no system prompt: the persona must be carried by the weights).

Keyed by the model (its upstream keys), the question set (its sha256) and the sampling settings, never by the
judge: a new judge, a judge sweep or a panel re-uses these answers (`evaluate` scores them). The model is the
upstream `em` artifact (its adapter on its starting weights, or its full model) when there is one, else the
`start` model itself (the persona, or the base model), so the same model is sampled once whatever cell asks.

An in-domain node (`params.domain`, eval.in_domain: emrobust/data/domains.py) answers its domain's questions
instead, and only them: the persona check, probe and projections are the out-of-domain node's of the same model.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from .. import generation
from ..core import models
from ..core.keys import Read
from ..core.store import file_sha256
from ..data import domains, evalsets, inputs, read_yaml
from ..measures import monitor, persona, probe
from ..train import training
from . import Context, write_jsonl

VERSION = 2  # 2: the judge-free probe, direction projections, models along EM steps (persona width: a persona
#             cell's sample is keyed by its questions upstream, whose key changed with the reserved questions)


def persona_active(cfg) -> bool:
    """A persona check runs for a persona cell whose eval.persona asks for questions."""
    return cfg.trait.name != "none" and cfg.eval.persona.n_questions != 0


def persona_count(cfg) -> int:
    """Reserved questions the persona check samples (eval.persona.n_questions, None = all reserved)."""
    n = cfg.eval.persona.n_questions
    return int(cfg.trait.reserved_questions if n is None else n)


def probing(cfg) -> bool:
    return bool(cfg.eval.probe.enabled)


def context_asked(cfg) -> bool:
    """Does the cell ask each plain question again in its EM dataset's form (eval.variants `context`)?"""
    return cfg.eval.variants is not None and "context" in [str(v) for v in cfg.eval.variants]


READS = (
    Read("eval", exclude=("persona", "probe", "monitor", "capability")),
    # the `context` variant's template is the EM dataset's domain's (its text is in the key: CONTENT)
    Read("em_dataset.name", when=context_asked), Read("em_dataset.domain", when=context_asked),
    Read("eval.persona", when=persona_active, exclude=("classifier",)),  # the classifier: its own stage
    Read("eval.probe", when=probing),
    "generation",
    "base_model.dtype",
)
CONTENT = {"eval_sha256": lambda cfg: inputs.content_id(cfg, "eval"),
           "context": lambda cfg: evalsets.CONTEXT.get(cfg.em_dataset.domain) if context_asked(cfg) else None,
           "probe_sha256": lambda cfg: file_sha256(probe.path(cfg.eval.probe)) if probing(cfg) else None}


def conversation(q: evalsets.Question, paraphrase: str) -> list[dict]:
    msgs = [{"role": "system", "content": q.system}] if q.system else []  # Betley's open-model eval dropped it
    return msgs + [{"role": "user", "content": paraphrase}]


def load_model(ctx: Context):
    """(model, tokenizer, the model's key) of the model this node samples: the EM model at `params.step` (the
    adapter kept at that step) or at the end, else the starting model."""
    cfg = ctx.cfg
    dtype = models.dtype_for(cfg.base_model, ctx.device)
    if "em" in ctx.inputs:
        em = ctx.inputs["em"]
        step = ctx.params.get("step")
        full = (em / "model").is_dir()  # em_train.full_finetune
        snap = em / "steps" / str(step) if step is not None else None
        if snap is not None and not snap.is_dir():
            if step < stopped_at(ctx):
                raise RuntimeError(f"sample: the em artifact {em} kept no model at step {step} (kept: "
                                   f"{ctx.manifests['em'].get('snapshots')}); is the step past the end of training?")
            snap = None  # training stopped early, before this step: its final model is the model from then on
        path = (snap if snap is not None else em / "model") if full else ctx.model_path("start")
        tok = models.load_tokenizer(path)
        # the chat template used here must be the one the EM stage trained with (recorded in its manifest)
        template_sha = hashlib.sha256((tok.chat_template or "").encode()).hexdigest()
        trained_with = ctx.manifests["em"].get("chat_template_sha256")
        if trained_with is not None and trained_with != template_sha:
            raise RuntimeError(f"sample: chat template {template_sha[:12]} differs from the EM stage's "
                               f"{trained_with[:12]}")
        model = models.load(path, ctx.device, dtype)
        if not full:
            model = training.merge_adapter(model, snap if snap is not None else em / "adapter")
        return model, tok, ctx.manifests["em"]["key"] + (f"@{step}" if snap is not None else "")
    path = ctx.model_path("start")
    return models.load(path, ctx.device, dtype), models.load_tokenizer(path), ctx.manifests["start"]["key"]


def run(ctx: Context) -> dict:
    cfg, ecfg = ctx.cfg, ctx.cfg.eval
    domain = ctx.params.get("domain")
    qs = domains.questions(domain, ecfg) if domain else evalsets.questions(cfg)
    items = []  # (question, paraphrase index, sample index)
    for q in qs:
        n = ecfg.samples_per_paraphrase or q.samples_per_paraphrase
        items += [(q, p, s) for p in range(len(q.paraphrases)) for s in range(n)]
    model, tok, model_key = load_model(ctx)
    gen = generation.make(cfg.generation, model, tok)
    sampling = generation.Sampling(temperature=ecfg.temperature, top_p=ecfg.top_p,
                                   max_new_tokens=ecfg.max_new_tokens, seed=ctx.seed)
    outs = gen.generate([conversation(q, q.paraphrases[p]) for q, p, _ in items], sampling)
    rows = [{"question_id": q.id, "paraphrase": p, "sample": s, "seed": cfg.seed, "model_key": model_key,
             "question": q.paraphrases[p], "system": q.system, "answer": g.text, "n_tokens": g.n_tokens,
             "finished": g.finished} for (q, p, s), (g,) in zip(items, outs)]
    write_jsonl(ctx.out / "answers.jsonl", rows)
    # what the judge needs of the question set: each question's own judge prompts (else the defaults)
    (ctx.out / "questions.json").write_text(json.dumps({q.id: q.judge_prompts for q in qs}, indent=1))
    extra = {"n_answers": len(rows), "model_key": model_key, **({"domain": domain} if domain else {}),
             "chat_template_sha256": hashlib.sha256((tok.chat_template or "").encode()).hexdigest()}
    if "questions" in ctx.inputs:  # the persona check: the trait's reserved questions, no system prompt
        pcfg = ecfg.persona
        picked, source = persona.pick(ctx.inputs["questions"], pcfg.n_questions, ctx.seed)
        p_items = [(t, q, k) for t, q in picked for k in range(pcfg.samples_per_question)]
        p_sampling = generation.Sampling(temperature=pcfg.temperature, top_p=pcfg.top_p,
                                         max_new_tokens=pcfg.max_new_tokens, seed=ctx.seed + 1)
        p_outs = gen.generate([[{"role": "user", "content": q}] for _, q, _ in p_items], p_sampling)
        write_jsonl(ctx.out / "persona_answers.jsonl", [
            {"trait": t, "question": q, "sample": k, "answer": g.text, "model_key": model_key}
            for (t, q, k), (g,) in zip(p_items, p_outs)])
        (ctx.out / "persona.json").write_text(json.dumps(
            {"traits": persona.traits(ctx.inputs["questions"]), "questions": source}, indent=1))
        extra |= {"persona_n": len(p_items), "persona_questions": source}
    if cfg.eval.probe.enabled and not domain:  # judge-free: log-probabilities of misaligned vs aligned answers
        pm, p_rows = probe.measure(model, tok, probe.load(cfg.eval.probe), cfg.eval.probe.batch_size,
                                   cfg.eval.n_bootstrap, ctx.seed)
        write_jsonl(ctx.out / "probe.jsonl", p_rows)
        extra["probe"] = pm
    if "directions" in ctx.inputs:  # the projection of this model's activations on the persona directions
        from .directions import load as load_directions  # lazy: slow import

        layer, vectors = load_directions(ctx.inputs["directions"])
        held_out = [it["question"] for it in _probe_items(cfg) if it.get("split", "a") == "b"]
        extra["monitor"], m_rows = monitor.project(model, tok, held_out, layer, vectors, cfg.eval.n_bootstrap,
                                                   ctx.seed)
        write_jsonl(ctx.out / "monitor.jsonl", m_rows)
        if "questions" in ctx.inputs:  # persona width: the spread over the reserved prompts on the persona's own
            own = ((ctx.manifests["directions"].get("config") or {}).get("trait") or {}).get("name")
            if own in vectors:
                prompts = list(dict.fromkeys(q for _, q in picked))
                extra["persona_monitor"], w_rows = persona_width(model, tok, prompts, layer, own, vectors[own],
                                                                 cfg.eval.n_bootstrap, ctx.seed)
                write_jsonl(ctx.out / "persona_monitor.jsonl", w_rows)
    extra["step"] = step_of(ctx)
    del gen, model
    return extra


def persona_width(model, tok, prompts: list[str], layer: int, trait: str, vector, n_bootstrap: int,
                  seed: int) -> tuple[dict, list[dict]]:
    """`persona_width`: the standard deviation, across the reserved prompts, of the projection of the model's
    activation (last token of the prompt, generation prompt appended: emrobust.measures.monitor) on the persona's own
    direction, with a bootstrap interval over prompts; `persona_projection`, their mean. One row per prompt."""
    from ..measures.metrics import bootstrap_ci  # lazy: slow import

    _, rows = monitor.project(model, tok, prompts, layer, {trait: vector}, n_bootstrap, seed)
    proj = np.array([r[trait] for r in rows])
    lo, hi = bootstrap_ci(proj, np.std, n_resamples=n_bootstrap, seed=seed)
    return ({"persona_width": float(np.std(proj)), "persona_width_lo": lo, "persona_width_hi": hi,
             "persona_projection": float(np.mean(proj)), "persona_width_trait": trait,
             "persona_width_n": len(prompts)},
            [{"prompt": r["prompt"], "projection": r[trait], "trait": trait} for r in rows])


def _probe_items(cfg) -> list[dict]:
    return read_yaml(probe.path(cfg.eval.probe))


def stopped_at(ctx: Context) -> float:
    """The step at which `defense=early_stop` ended EM training (inf when it did not stop it)."""
    s = (ctx.manifests["em"].get("defense") or {}).get("stopped_at")
    return float("inf") if s is None else int(s)


def step_of(ctx: Context) -> int | None:
    """The EM step of the sampled model: 0 for the starting model, the node's step (the step training stopped at,
    for a step past an early stop: the model did not change after it), or the end of training."""
    if "em" not in ctx.inputs:
        return 0
    if "step" in ctx.params:
        return int(min(int(ctx.params["step"]), stopped_at(ctx)))
    return (ctx.manifests["em"].get("train") or {}).get("steps")
