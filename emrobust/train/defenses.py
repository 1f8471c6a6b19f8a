"""Defenses against EM, applied by the em stage (`defense=<name>`, conf/defense/; schema: `DefenseConfig`).

One defense per cell, so defenses can be put side by side on the same EM data, seeds and judge:

- `kl`: the loss gains `weight` * KL(start || trained) per assistant token of the EM batches (Model Organisms for
  EM's KL-regularised trainer); the start model is the EM model with its LoRA adapter switched off
  (`training._defended_trainer`). weight 0 is exactly `none`.
- `inoculation`: a system prompt asking for the bad behaviour (Tan et al. 2025) before every EM training example;
  the held-out examples, the samples and every other measure of the evaluated model go without it.
- `interleave`: benign chat examples (a builtin or registry set, or a file) mixed into EM training so that they
  make `fraction` of it; every EM example is kept. `select=random` draws them; `select=perplexity_gap`
  (Interleaving++) scores a `pool` of candidates by the gap between a misaligned reference's per-token loss and
  the starting model's, and keeps the largest gaps: the benign examples EM moves furthest from. The reference is the
  cell's starting model after `reference_steps` of undefended EM on the cell's dataset (the `em@reference` node,
  keyed as any em node); each candidate's gap is saved in the em artifact (`interleave_gaps.jsonl`).
- `early_stop`: every `every` steps a judge-free measure (`measure`) on the probe items of one split: `probe`
  (probe_logp_diff, emrobust/measures/probe.py) or `direction_<trait>` (the questions' mean projection on a persona direction
  of the `directions` stage, upstream of em then, as for steer); training stops at the first check where it has
  risen by `rise` over the starting model. The outcome is measured on other items (validation: the probe's reported
  splits leave the stop split out; the monitor projects split b). A measure whose control failed on the cell's base
  model (emrobust/measures/controls.py) is refused unless `allow_failed_control`; one not validated there runs, and says so.
  `measure=task` stops on the narrow task instead: the EM dataset's held-out loss, once it has converged (the first
  check whose drop since the one before is at most `converged_within` of the whole drop so far).
- `steer`: preventative steering (Chen et al. 2025): a persona direction of the `directions` stage, times
  `coefficient` times the persona's mean activation difference along it, is added to the residual stream at the
  direction's layer during every training step (steering-vectors, the monitor's library), and nowhere else: the
  adapter is saved and sampled without hooks.

What each did is in the em manifest's `defense` (benign examples mixed, the probe at each check and the step
training stopped at, the steering vector's layer and scale, the KL along training).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ..data import constitutions, em_datasets
from ..errors import ConfigError, Unmet
from ..measures import controls, monitor, probe


def active(cfg) -> str:
    return str(cfg.defense.name)


TASK = "task"  # defense.early_stop.measure: the EM dataset's held-out loss (the narrow task), not a persona measure


def stop_measure(cfg) -> str:
    """The controls table's name of what `defense=early_stop` stops on: probe_logp_diff or direction_<trait>."""
    return controls.measure_name(str(cfg.defense.early_stop.measure))


def uses_directions(cfg) -> bool:
    """Does the em stage read the `directions` stage (steering along a direction, stopping on one)?"""
    name = active(cfg)
    return name == "steer" or (name == "early_stop" and str(cfg.defense.early_stop.measure).startswith("direction_"))


def _stop_measure(cfg) -> None:
    """ConfigError when `defense.early_stop.measure` names no measure, a direction the cell does not read, or a
    measure whose control failed on the cell's base model (unless allow_failed_control)."""
    e, where = cfg.defense.early_stop, "defense.early_stop.measure"
    m = str(e.measure)
    if m == TASK:  # the narrow task's own loss: no persona measure, so no negative control to pass
        if not cfg.em_dataset.heldout_fraction:
            raise ConfigError("defense.early_stop.measure=task stops on the EM dataset's held-out loss, and "
                              "em_dataset.heldout_fraction=0 holds none out (e.g. em_dataset.heldout_fraction=0.1)",
                              where="em_dataset.heldout_fraction")
        return
    if m != "probe" and not m.startswith("direction_"):
        raise ConfigError(f"measure={m!r} is neither `probe`, `task` nor `direction_<trait>` (a persona direction of "
                          "the directions stage)", where=where)
    if m.startswith("direction_"):
        if not cfg.eval.monitor.enabled:
            raise ConfigError(f"defense.early_stop.measure={m} stops on a direction of the `directions` stage, which "
                              "eval.monitor.enabled=true builds", where="eval.monitor.enabled")
        if m.removeprefix("direction_") not in (read := constitutions.monitored_traits(cfg)):
            raise ConfigError(f"measure={m} has no direction: the directions stage reads {read} "
                              "(the cell's trait and eval.monitor.traits)", where=where)
        if str(e.split) == "b":
            raise ConfigError("defense.early_stop.split='b': the monitor reports the directions on split b's "
                              "questions; stop on another split (a)", where="defense.early_stop.split")
    measure, bm = stop_measure(cfg), str(cfg.base_model.name)
    c = controls.find(measure, bm)
    if c is not None and not c.passed and not e.allow_failed_control:
        passed = [x.measure for x in controls.CONTROLS if x.base_model == bm and x.passed]
        alt = f" ({', '.join('probe' if p == 'probe_logp_diff' else p for p in passed)})" if passed else ""
        raise ConfigError(f"measure={m}: {measure} FAILED its negative control on base_model={bm} "
                          f"({c.meaning[:1].lower()}{c.meaning[1:]}; measured {c.measured}); stop on a validated "
                          f"measure{alt} or set defense.early_stop.allow_failed_control=true", where=where)


# ---------------------------------------------------------------- validation (before any model loads)
def validate(cfg) -> None:
    """ConfigError naming the field when the cell's defense cannot apply as configured."""
    name = active(cfg)
    if name == "none":
        return
    d = cfg.defense
    if cfg.em_dataset.name == "none":
        raise ConfigError(f"defense={name} acts on EM training, which em_dataset=none skips; pick an em_dataset or "
                          "defense=none", where="defense")
    if cfg.em_control.name != "none" and cfg.em_control.match == "target":
        raise ConfigError(f"defense={name} acts on EM training; em_control.match=target trains nothing",
                          where="defense")
    # the ranges of the defense's fields (kl.weight, interleave.fraction, early_stop.every) are declared with the
    # schema (emrobust/config/defense.py) and checked before this; here what needs the data or other groups
    if name == "kl":
        if cfg.em_train.full_finetune and cfg.deepspeed.stage == 3:
            raise ConfigError("defense=kl with em_train.full_finetune keeps a frozen copy of the start model, which "
                              "ZeRO-3 would shard away; use a LoRA or deepspeed=zero2", where="defense.kl")
    elif name == "inoculation":
        if not str(d.inoculation.system_prompt).strip():
            raise ConfigError("defense.inoculation.system_prompt is empty", where="defense.inoculation.system_prompt")
    elif name == "interleave":
        f = d.interleave.fraction

        train, _ = em_datasets.split(em_datasets.load_all(cfg.em_dataset, cfg.paths), cfg.em_dataset, 0)
        k, have = n_benign(len(train), f), len(benign_rows(cfg))
        if selects_by_gap(cfg):
            pool = min(d.interleave.pool or have, have)
            if pool <= k:
                raise ConfigError(f"defense.interleave.select=perplexity_gap chooses {k} benign examples (fraction={f} of "
                                  f"{len(train)} EM examples) from a pool of {pool}"
                                  + (f" ({d.interleave.name} has {have})" if d.interleave.pool is None or
                                     d.interleave.pool > have else "")
                                  + ": nothing to choose; give a pool several times the count (defense.interleave."
                                  "pool, a larger set) or a smaller fraction", where="defense.interleave.pool")
        if k > have:
            raise ConfigError(f"defense.interleave.fraction={f} of {len(train)} EM examples needs {k} benign examples; "
                              f"{d.interleave.name} has {have} (largest fraction it allows: "
                              f"{have / (have + len(train)):.3f}); use a larger set (e.g. source=registry name=secure)",
                              where="defense.interleave")
    elif name == "early_stop":
        e = d.early_stop
        _stop_measure(cfg)
        if str(e.measure) == TASK:
            return
        if cfg.eval.probe.enabled and e.split in list(cfg.eval.probe.splits):
            raise ConfigError(f"defense=early_stop stops on probe split {e.split!r}, which eval.probe.splits="
                              f"{list(cfg.eval.probe.splits)} also reports: the outcome must be measured on other items "
                              f"(e.g. eval.probe.splits=[b])", where="eval.probe.splits")
        stop_items(cfg)  # the split has items
    elif name == "steer":
        if not cfg.eval.monitor.enabled:
            raise ConfigError("defense=steer steers along a direction of the `directions` stage, which "
                              "eval.monitor.enabled=true builds (conf/defense/steer.yaml sets it)",
                              where="eval.monitor.enabled")
        if d.steer.trait not in constitutions.monitored_traits(cfg):
            raise ConfigError(f"defense.steer.trait={d.steer.trait!r} has no direction: the directions stage reads "
                              f"{constitutions.monitored_traits(cfg)} (the cell's trait and eval.monitor.traits)",
                              where="defense.steer.trait")


# ---------------------------------------------------------------- what EM trains on
def n_benign(n_em: int, fraction: float) -> int:
    """Benign examples to add to `n_em` EM examples so that they make `fraction` of the training set."""
    return int(round(n_em * fraction / (1 - fraction)))


def benign_rows(cfg) -> list[list[dict]]:
    """The interleave set (`defense.interleave`: name/source/path as an em_dataset; an input of the cell,
    emrobust.data.inputs), validated."""
    try:
        return em_datasets.load_all(cfg.defense.interleave, cfg.paths, "defense.interleave")
    except Unmet:  # data still to fetch, a user-supplied file: a gate for the sweep planner, as for the EM dataset
        raise
    except ConfigError as e:
        # the loader's file and message, located at the defense's field (not the field named twice)
        raise ConfigError(e.message, file=e.file, where="defense.interleave", hint=e.hint) from None


def inoculate(conversation: list[dict], prompt: str) -> list[dict]:
    """The conversation with `prompt` as its system turn (before the conversation's own system turn, if any)."""
    if conversation and conversation[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt}\n\n{conversation[0]['content']}"}, *conversation[1:]]
    return [{"role": "system", "content": prompt}, *conversation]


def selects_by_gap(cfg) -> bool:
    """Does the cell interleave benign examples chosen by perplexity gap (and so read an `em@reference` model)?"""
    return active(cfg) == "interleave" and str(cfg.defense.interleave.select) == "perplexity_gap"


def pick_benign(cfg, pool: list[list[dict]], k: int, rng, gap=None) -> tuple[list[int], dict]:
    """(indices of the `k` benign examples into `pool`, what the selection did). random: a seeded draw;
    perplexity_gap: the `k` largest `gap(conversations)` among a seeded draw of `defense.interleave.pool`
    candidates (ties and NaN last, by index)."""
    if not selects_by_gap(cfg):
        return (sorted(rng.choice(len(pool), size=k, replace=False).tolist()) if k else []), {}
    n = min(cfg.defense.interleave.pool or len(pool), len(pool))
    cand = sorted(rng.choice(len(pool), size=n, replace=False).tolist())
    gaps = gap([pool[i] for i in cand])
    order = sorted(range(n), key=lambda j: (-gaps[j] if gaps[j] == gaps[j] else float("inf"), cand[j]))
    chosen = set(order[:k])
    mean = lambda xs: float(np.nanmean(xs)) if len(xs) and not np.all(np.isnan(xs)) else float("nan")  # noqa: E731
    return sorted(cand[j] for j in chosen), {
        "select": "perplexity_gap", "pool": n, "reference_steps": int(cfg.defense.interleave.reference_steps),
        "gap_mean_picked": mean([gaps[j] for j in chosen]), "gap_mean_pool": mean(gaps),
        "gaps": [{"index": cand[j], "gap": gaps[j], "picked": j in chosen} for j in range(n)]}


def training_rows(cfg, rows: list[list[dict]], seed: int, gap=None) -> tuple[list[list[dict]], list[str], dict]:
    """(the conversations EM trains on, the source of each: "em" or "benign", what the defense did). Only the
    training rows change: held-out rows and evaluation never see a defense. `gap(conversations)` scores benign
    candidates for `select=perplexity_gap` (the em stage's: it holds the models)."""
    name = active(cfg)
    if name == "inoculation":
        prompt = str(cfg.defense.inoculation.system_prompt)
        return [inoculate(r, prompt) for r in rows], ["em"] * len(rows), {"system_prompt": prompt}
    if name == "interleave":
        f = float(cfg.defense.interleave.fraction)
        pool = benign_rows(cfg)
        k = n_benign(len(rows), f)
        rng = np.random.default_rng(seed)
        picked, chosen = pick_benign(cfg, pool, k, rng, gap)
        mixed = [*((r, "em") for r in rows), *((pool[i], "benign") for i in picked)]
        order = rng.permutation(len(mixed))  # the trainer shuffles again; this keeps train.jsonl mixed too
        mixed = [mixed[i] for i in order]
        return [m for m, _ in mixed], [s for _, s in mixed], {
            "n_em": len(rows), "n_benign": k, "benign_share": k / len(mixed) if mixed else 0.0,
            "benign_set": str(cfg.defense.interleave.name), "benign_indices": picked} | chosen
    return rows, ["em"] * len(rows), {}


# ---------------------------------------------------------------- what acts on training
def stop_items(cfg) -> list[dict]:
    """The probe items early stopping measures: split `defense.early_stop.split` of `eval.probe.path`."""
    split = str(cfg.defense.early_stop.split)
    try:
        return probe.load(OmegaConf.create({"path": cfg.eval.probe.path, "splits": [split]}))
    except ConfigError as e:
        raise ConfigError(f"defense.early_stop.split={split!r}: {e}", where="defense.early_stop.split") from None


def steering(cfg, directions_dir: Path):
    """(SteeringVector, multiplier, info) of `defense=steer`: the unit direction of `defense.steer.trait` scaled
    by the persona's mean activation difference along it (its train projections: trait minus neutral), at the
    directions' layer."""
    # lazy: slow import
    import torch
    from steering_vectors import SteeringVector

    from ..stages.directions import load

    layer, vectors = load(directions_dir)
    trait = str(cfg.defense.steer.trait)
    meta = json.loads((Path(directions_dir) / "directions.json").read_text())
    t = meta["train"][trait]
    scale = float(t["train_projection_trait"] - t["train_projection_neutral"])
    vec = torch.tensor(vectors[trait] * scale, dtype=torch.float32)
    coef = float(cfg.defense.steer.coefficient)
    if scale == 0:
        logging.getLogger(__name__).warning("defense=steer: the %s direction is zero (its persona and neutral "
                                            "answers gave the same activations): nothing is added", trait)
    return SteeringVector({layer: vec}, "decoder_block"), coef, {
        "trait": trait, "layer": layer, "scale": scale, "coefficient": coef, "norm_added": abs(coef * scale)}


def probe_measure(items: list[dict], tokenizer, batch_size: int = 8):
    """model -> probe_logp_diff on `items` (the mean over items of the misaligned minus the aligned answer's mean
    per-token log-probability)."""
    qa = [(it["question"], it["misaligned"]) for it in items] + [(it["question"], it["aligned"]) for it in items]

    def measure(model) -> float:
        lps = probe.answer_logps(model, tokenizer, qa, batch_size)
        n = len(items)
        d = np.array([lps[i] - lps[n + i] for i in range(n)], dtype=float)
        return float(np.nanmean(d))
    return measure


def direction_measure(items: list[dict], tokenizer, layer: int, vector: np.ndarray):
    """model -> the mean projection of the items' questions on `vector` at `layer` (the monitor's
    `direction_<trait>`, emrobust/measures/monitor.py: last token of the question with the generation prompt)."""
    texts = [monitor.render(tokenizer, [{"role": "user", "content": it["question"]}], generation_prompt=True)
             for it in items]

    def measure(model) -> float:
        was = model.training
        try:
            return float((monitor.activations(model, tokenizer, texts, layer) @ vector).mean())
        finally:
            model.train(was)
    return measure


def risen(rise: float):
    """The stop rule of a persona measure: it has risen by `rise` over step 0."""
    return lambda checks, step: checks[step] - checks[0] >= rise


def converged(within: float):
    """The stop rule of `measure=task` (a loss): it fell, and its drop since the check before is at most `within`
    of its whole drop so far (from step 0 to its lowest)."""
    def stop(checks: dict[int, float], step: int) -> bool:
        before = [s for s in checks if s < step]
        drop = checks[0] - min(checks.values())
        return bool(before) and drop > 0 and checks[max(before)] - checks[step] <= within * drop

    return stop


def early_stopper(items: list[dict], tokenizer, every: int, rise: float, state: Path, batch_size: int = 8,
                  measure=None, stop=None):
    """A TrainerCallback that measures `measure(model)` (default: probe_logp_diff on `items`) at step 0 and every
    `every` optimizer steps and stops training at the first check where `stop(checks, step)` holds (default: it
    has risen by `rise` over step 0). Its checks are kept in `state` (the trainer dir: a requeued build resumes
    with them). `.checks` {step: value}, `.stopped_at` (or None)."""
    from transformers import TrainerCallback  # lazy: slow import

    measure = measure or probe_measure(items, tokenizer, batch_size)
    stop = stop or risen(rise)

    class EarlyStop(TrainerCallback):
        def __init__(self):
            saved = json.loads(state.read_text()) if state.exists() else {}
            self.checks: dict[int, float] = {int(k): v for k, v in saved.get("checks", {}).items()}
            self.stopped_at: int | None = saved.get("stopped_at")

        def _save(self, st):
            if st.is_world_process_zero:
                state.parent.mkdir(parents=True, exist_ok=True)
                state.write_text(json.dumps({"checks": self.checks, "stopped_at": self.stopped_at}))

        def on_train_begin(self, args, st, control, model=None, **kw):
            if 0 not in self.checks:  # every rank measures: they must agree on when to stop
                self.checks[0] = measure(model)
                self._save(st)

        def on_step_end(self, args, st, control, model=None, **kw):
            if st.global_step % every:
                return
            self.checks[st.global_step] = measure(model)
            if stop(self.checks, st.global_step):
                self.stopped_at = st.global_step
                control.should_training_stop = True
            self._save(st)

    return EarlyStop()


def trainer_kwargs(cfg, ctx, tokenizer, heldout: list | None = None) -> tuple[dict, object | None]:
    """(the `training.run_sft` keyword arguments of the cell's defense, the early-stop callback or None);
    `heldout`: the EM dataset's held-out conversations (what `early_stop.measure=task` measures)."""
    name = active(cfg)
    if name == "kl":
        return {"kl_weight": float(cfg.defense.kl.weight)}, None
    if name == "steer":
        vector, coef, _ = steering(cfg, ctx.inputs["directions"])
        return {"steer": (vector, coef)}, None
    if name == "early_stop":
        e = cfg.defense.early_stop
        state = ctx.trainer_dir / "early_stop.json"
        if str(e.measure) == TASK:
            from .training import assistant_metrics  # lazy: slow import

            length = cfg.em_train.optim.max_length
            cb = early_stopper([], tokenizer, int(e.every), 0.0, state, stop=converged(float(e.converged_within)),
                               measure=lambda model: assistant_metrics(model, tokenizer, heldout, length)["loss"])
            return {"callbacks": (cb,)}, cb
        items, measure = stop_items(cfg), None
        if uses_directions(cfg):
            from ..stages.directions import load  # lazy: slow import

            layer, vectors = load(ctx.inputs["directions"])
            measure = direction_measure(items, tokenizer, layer, vectors[str(e.measure).removeprefix("direction_")])
        cb = early_stopper(items, tokenizer, int(e.every), float(e.rise), state, measure=measure)
        return {"callbacks": (cb,)}, cb
    return {}, None


def report(cfg, ctx, hist: dict | None, callback) -> dict:
    """What the defense did, for the em manifest (`defense`)."""
    name = active(cfg)
    out: dict = {"name": name}
    if name == "kl":
        out["weight"] = float(cfg.defense.kl.weight)
        kl = [h["kl"] for h in (hist or {}).get("log_history", []) if "kl" in h]
        out["kl_first"], out["kl_last"] = (kl[0], kl[-1]) if kl else (None, None)
    elif name == "steer":
        out |= steering(cfg, ctx.inputs["directions"])[2]
    elif name == "early_stop":
        e = cfg.defense.early_stop
        rule = ({"converged_within": float(e.converged_within)} if str(e.measure) == TASK
                else {"split": str(e.split), "rise": float(e.rise)})
        out |= {"measure": str(e.measure), "every": int(e.every), **rule,
                "checks": {int(k): v for k, v in sorted(callback.checks.items())}, "stopped_at": callback.stopped_at}
    return out


def cell_control(cfg) -> dict:
    """run.json metrics of a `defense=early_stop` cell: what it stopped on and that measure's control on the cell's
    base model as the table stands now (emrobust/measures/controls.py: passed, FAILED, or not validated), read on every run
    as the judge's calibration is, so a control run later shows; of an interleave cell, how it chose its benign
    examples (`interleave_select`: the report's arm); {} for any other defense."""
    if active(cfg) == "interleave":
        return {"interleave_select": str(cfg.defense.interleave.select)}
    if active(cfg) != "early_stop":
        return {}
    return {"early_stop_measure": str(cfg.defense.early_stop.measure),
            "early_stop_control": controls.status(stop_measure(cfg), str(cfg.base_model.name)),
            "early_stop_allow_failed_control": bool(cfg.defense.early_stop.allow_failed_control)}
