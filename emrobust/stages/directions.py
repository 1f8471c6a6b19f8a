"""directions: persona directions on the base model (emrobust/measures/monitor.py), for the monitor of every evaluated step.

For the cell's trait (when it has one) and each of `eval.monitor.traits` (OCT constitutions, default
oct_misalignment): the base model answers the probe's split-a questions under that trait's persona prompt and
under the neutral constitution's (the same sampling seed for both), and the direction is the mean activation
difference of the two answers at one layer. Keyed by the base model, the constitutions (sha256), the probe set
(sha256), the monitor's settings and the seed, so every cell of a persona shares it.
"""
from __future__ import annotations

import json

import numpy as np

from .. import generation
from ..core import models
from ..core.keys import Read
from ..core.store import file_sha256
from ..data import constitutions, read_yaml
from ..measures import monitor, probe
from . import Context

VERSION = 1
NEUTRAL = "neutral"


def _constitution_hashes(cfg) -> dict[str, str]:
    return {t: constitutions.content_sha256(constitutions.trait_config(cfg, t), cfg.paths)
            for t in [*constitutions.monitored_traits(cfg), NEUTRAL]}


READS = (
    "eval.monitor",
    "eval.probe.path",  # where the prompts are (their sha256 is in CONTENT)
    Read("trait", exclude=("expand_to", "expansion", "reserved_questions")),
    "base_model.assistant_name",
    "base_model.dtype",
    "generation",
)
CONTENT = {"constitutions": _constitution_hashes,
           "probe_sha256": lambda cfg: file_sha256(probe.path(cfg.eval.probe))}


def persona_prompt(cfg, name: str) -> str:
    const = constitutions.load_cfg(constitutions.trait_config(cfg, name), cfg.paths)
    return constitutions.persona_prompt(const, cfg.trait.persona_instruction, cfg.base_model.assistant_name)


def training_prompts(cfg) -> list[str]:
    items = read_yaml(probe.path(cfg.eval.probe))
    return [it["question"] for it in items if it.get("split", "a") == "a"][: cfg.eval.monitor.n_prompts]


def run(ctx: Context) -> dict:
    cfg, mcfg = ctx.cfg, ctx.cfg.eval.monitor
    path = ctx.inputs["base"]
    tok = models.load_tokenizer(path)
    model = models.load(path, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    layer = monitor.layer_of(model, mcfg.layer_fraction)
    prompts = training_prompts(cfg)
    gen = generation.make(cfg.generation, model, tok)
    sampling = generation.Sampling(temperature=mcfg.temperature, top_p=1.0, max_new_tokens=mcfg.max_new_tokens,
                                   seed=ctx.seed)

    def answers(system: str) -> list[str]:
        outs = gen.generate([[{"role": "system", "content": system}, {"role": "user", "content": p}]
                             for p in prompts], sampling)
        return [monitor.render(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": g.text}])
                for p, (g,) in zip(prompts, outs)]

    neutral = answers(persona_prompt(cfg, NEUTRAL))
    vectors, info = {}, {}
    for t in constitutions.monitored_traits(cfg):
        pos = answers(persona_prompt(cfg, t))
        v = monitor.direction(model, tok, list(zip(pos, neutral)), layer)
        vectors[t] = v
        acts_pos = monitor.activations(model, tok, pos, layer) @ v
        acts_neg = monitor.activations(model, tok, neutral, layer) @ v
        info[t] = {"train_projection_trait": float(acts_pos.mean()), "train_projection_neutral": float(acts_neg.mean())}
    np.savez(ctx.out / "directions.npz", **vectors)
    (ctx.out / "directions.json").write_text(json.dumps({"layer": layer, "traits": list(vectors),
                                                         "n_prompts": len(prompts), "train": info}, indent=1))
    return {"layer": layer, "traits": list(vectors), "train": info}


def load(path) -> tuple[int, dict[str, np.ndarray]]:
    """(layer, {trait: unit direction}) of a directions artifact."""
    meta = json.loads((path / "directions.json").read_text())
    with np.load(path / "directions.npz") as z:
        return meta["layer"], {k: z[k] for k in z.files}
