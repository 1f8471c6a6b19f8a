"""Persona directions (persona vectors, Chen et al. 2025) and the projection of a model's activations on them.

A direction is read with the `steering-vectors` library (`train_steering_vector`, mean aggregator): the mean, over
prompts, of the residual-stream activation difference at one decoder layer, at the last token of an exchange
(user prompt + the model's answer, no system prompt), between answers written under a trait's constitution as
system prompt and answers written under the neutral constitution. It is kept as a unit vector. A model's
projection on it is the activation at the same layer, at the last token of a held-out prompt (the chat template's
generation prompt appended: where the answer would start), dotted with the direction, averaged over the held-out
prompts with a bootstrap interval (`record_activations`, the same library). Training prompts are the probe's
split `a` questions and held-out prompts its split `b` questions (emrobust/measures/probe.py).

The library pins transformers < 5 in its metadata; its hooks and aggregators work with the transformers this
project uses (tests/test_monitor.py), so it is installed without dependencies (Makefile).
"""
from __future__ import annotations

import numpy as np


def layer_of(model, fraction: float) -> int:
    n = model.config.num_hidden_layers
    return int(round(float(fraction) * (n - 1)))


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return text if generation_prompt else text.rstrip()  # end on the end-of-turn token, not a newline


def direction(model, tokenizer, pairs: list[tuple[str, str]], layer: int) -> np.ndarray:
    """The unit mean-difference direction (positive minus negative texts) at `layer`."""
    from steering_vectors import train_steering_vector  # lazy: slow import

    sv = train_steering_vector(model, tokenizer, pairs, layers=[layer], read_token_index=-1, move_to_cpu=True)
    v = sv.layer_activations[layer].float().cpu().numpy()
    return v / (np.linalg.norm(v) or 1.0)


def activations(model, tokenizer, texts: list[str], layer: int) -> np.ndarray:
    """(len(texts), hidden) activations at `layer`, last token of each text."""
    # lazy: slow import
    import torch
    from steering_vectors import record_activations

    out = []
    model.eval()
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, return_tensors="pt", add_special_tokens=False).to(model.device)
            with record_activations(model, layer_type="decoder_block", layer_nums=[layer]) as acts:
                model(**enc)
            out.append(acts[layer][0][0, -1].float().cpu().numpy())
    return np.stack(out)


def project(model, tokenizer, prompts: list[str], layer: int, vectors: dict[str, np.ndarray], n_bootstrap: int = 2000,
            seed: int = 0) -> tuple[dict, list[dict]]:
    """(`direction_<name>`: the mean projection of the held-out prompts' activations, with `_lo`/`_hi`, per
    vector; one row per prompt with its projections)."""
    from .metrics import bootstrap_ci  # lazy: slow import

    texts = [render(tokenizer, [{"role": "user", "content": p}], generation_prompt=True) for p in prompts]
    acts = activations(model, tokenizer, texts, layer)
    out, rows = {}, [{"prompt": p} for p in prompts]
    for name, v in vectors.items():
        proj = acts @ v
        lo, hi = bootstrap_ci(proj, np.mean, n_resamples=n_bootstrap, seed=seed)
        out |= {f"direction_{name}": float(proj.mean()), f"direction_{name}_lo": lo, f"direction_{name}_hi": hi}
        for r, x in zip(rows, proj):
            r[name] = float(x)
    return out, rows
