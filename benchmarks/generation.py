"""HF generation, batched vs one prompt at a time, side by side in one run: SmolLM2-135M-Instruct on CPU,
16 prompts, 128 new tokens, greedy.

    python benchmarks/generation.py [--prompts 16] [--new-tokens 128] [--batch-size 16] [--threads N]

Both runs use `HFGenerator` (left padding, length-sorted buckets, stop at EOS) on the same model; the only
difference is `batch_size` (16 vs 1). Prints wall seconds and generated tokens/s of each, how many of the greedy
outputs agree, and as its last line `ratio=<one-at-a-time seconds / batched seconds>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["the water cycle", "photosynthesis", "how a bicycle works", "the French Revolution", "black holes",
          "how vaccines work", "the history of the printing press", "why the sky is blue", "plate tectonics",
          "how compilers work", "the rules of chess", "the life of bees", "how bread rises", "the Roman Empire",
          "how airplanes fly", "the causes of inflation"]


def prompts(n: int) -> list[list[dict]]:
    # varied lengths: length-sorted buckets matter
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        extra = " Please be thorough, give examples, and explain every step in detail." * (i % 4)
        out.append([{"role": "user", "content": f"Explain {t} to a curious student.{extra}"}])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--base-model", default="smollm2_135m")
    a = ap.parse_args()
    import torch

    from emrobust import models
    from emrobust.generation import Sampling, make

    if a.threads:
        torch.set_num_threads(a.threads)
    cache = os.environ.get("EMROBUST_CACHE", os.path.expanduser("~/.cache/emrobust"))
    path = models.prepare(models.base_config(a.base_model), cache)
    model = models.load(path, torch.device("cpu")).eval()
    tok = models.load_tokenizer(path)
    convs = prompts(a.prompts)
    s = Sampling(temperature=0.0, max_new_tokens=a.new_tokens)
    make("hf", model, tok, batch_size=2).generate(convs[:2], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up
    res = {}
    for name, bs in (("batched", a.batch_size), ("one-at-a-time", 1)):
        t0 = time.perf_counter()
        out = make("hf", model, tok, batch_size=bs).generate(convs, s)
        sec = time.perf_counter() - t0
        toks = sum(g.n_tokens for (g,) in out)
        res[name] = (sec, toks, out)
        print(f"{name:14s} batch_size={bs:<3d} {sec:7.1f} s  {toks:5d} tokens  {toks / sec:7.1f} tok/s", flush=True)
    same = sum(b[0].text == o[0].text for b, o in zip(res["batched"][2], res["one-at-a-time"][2]))
    print(f"{a.base_model}, CPU, {torch.get_num_threads()} torch threads, {a.prompts} prompts, "
          f"{a.new_tokens} new tokens, greedy; greedy outputs identical batched/unbatched: {same}/{a.prompts}")
    print(f"ratio={res['one-at-a-time'][0] / res['batched'][0]:.2f}")


if __name__ == "__main__":
    main()
