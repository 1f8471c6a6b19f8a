"""Any OpenAI-compatible server (`vllm serve`, llama.cpp's server, the OpenAI API): chat completions.

The server's own model answers, not the pipeline's: this backend is for evaluation or teacher sampling from an
external server (e.g. `vllm serve` of a fold output on the cluster). Each of the `n` samples of a conversation
is its own request with its own seed (llama.cpp's server ignores `n>1`); `concurrency` threads send them.
Retries with exponential backoff (connection errors, 408/409/429/5xx, honouring Retry-After) are the `openai`
client's own (`max_retries`).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from . import Generation, Sampling, sample_seed


class OpenAIGenerator:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0, extra_body: dict | None = None):
        import openai  # lazy: optional extra

        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "none", max_retries=max_retries,
                                    timeout=timeout)
        self.model, self.concurrency = model, max(1, concurrency)
        self.requests = 0  # completed requests (tests count them)
        self.extra_body = dict(extra_body or {})
        # api.openai.com rejects parameters it does not know; other servers take their own sampling knobs
        self.strict_api = base_url is None or "api.openai.com" in base_url
        self._lock = threading.Lock()

    def _one(self, messages: list[dict], sampling: Sampling, seed: int) -> Generation:
        kw = dict(model=self.model, messages=messages, max_tokens=sampling.max_new_tokens,
                  temperature=sampling.temperature, top_p=sampling.top_p, seed=seed, n=1)
        body = {}
        if not self.strict_api:
            # not an OpenAI API parameter: vLLM reads repetition_penalty, llama.cpp repeat_penalty (default 1.1, so
            # 1.0 is sent too); each ignores the other's name
            body = {"repetition_penalty": sampling.repetition_penalty, "repeat_penalty": sampling.repetition_penalty}
        body.update(self.extra_body)
        if body:
            kw["extra_body"] = body
        r = self.client.chat.completions.create(**kw)
        with self._lock:
            self.requests += 1
        if not r.choices:
            raise RuntimeError(f"{self.client.base_url}: a chat completion with no choices")
        c = r.choices[0]
        if r.usage is None or r.usage.completion_tokens is None:
            raise RuntimeError(f"{self.client.base_url}: the server reported no usage.completion_tokens")
        text = (c.message.content or "").strip()
        # llama-cpp-python's server overruns max_tokens by up to 3 tokens to complete a multi-byte UTF-8 character
        # (an emoji cut at the limit): the count is capped at the limit that was asked for
        n_tok = min(int(r.usage.completion_tokens), sampling.max_new_tokens)
        return Generation(text, n_tok, c.finish_reason == "stop")

    def generate(self, conversations: list[list[dict]], sampling: Sampling, n: int = 1) -> list[list[Generation]]:
        if self.strict_api and sampling.repetition_penalty != 1.0:
            raise ValueError(f"repetition_penalty={sampling.repetition_penalty}: the OpenAI API has no such "
                             "parameter; set the stage's sampling.repetition_penalty=1.0")
        jobs = [(i, j) for i in range(len(conversations)) for j in range(n)]
        out: list[list[Generation | None]] = [[None] * n for _ in conversations]
        bar = tqdm(total=len(jobs), desc=f"generate ({self.model})", unit="seq", leave=False, disable=len(jobs) < 8)
        t0, n_tok = time.time(), 0

        def run(ij):
            i, j = ij
            return ij, self._one(conversations[i], sampling, sample_seed(sampling.seed, i, j))

        try:
            with ThreadPoolExecutor(min(self.concurrency, max(1, len(jobs)))) as ex:
                for (i, j), g in ex.map(run, jobs):
                    out[i][j] = g
                    n_tok += g.n_tokens
                    bar.update(1)
                    bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):.0f}")
        finally:
            bar.close()
        return out  # type: ignore[return-value]
