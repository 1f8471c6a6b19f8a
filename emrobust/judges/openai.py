"""The judge behind any OpenAI-compatible endpoint (OpenAI, a llama.cpp or vLLM server): Betley's recipe over the
first token's top log-probabilities."""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import Score


def number_probs(top_logprobs) -> dict[int, float]:
    """{n: probability} over the tokens among `top_logprobs` that are an integer 0..100 (Betley et al.: the judge's
    first token; surrounding whitespace ignored, the same number from several tokens summed)."""
    out: dict[int, float] = {}
    for t in top_logprobs:
        tok = (t.token if hasattr(t, "token") else t["token"]).strip()
        lp = t.logprob if hasattr(t, "logprob") else t["logprob"]
        if tok.isascii() and tok.isdigit() and int(tok) <= 100:
            out[int(tok)] = out.get(int(tok), 0.0) + math.exp(lp)
    return out


class OpenAIJudge:
    """One chat completion per prompt: max_tokens=1, temperature=0, logprobs with top_logprobs=20; the score is the
    expectation over the integer tokens 0..100 among them. Retries with exponential backoff (connection errors,
    408/409/429/5xx, honouring Retry-After) are the `openai` client's own (`max_retries`); `concurrency` threads."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 min_mass: float = 0.25, concurrency: int = 8, max_retries: int = 6, timeout: float = 60.0):
        import openai  # lazy: optional extra

        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "none", max_retries=max_retries,
                                    timeout=timeout)
        self.model, self.min_mass, self.concurrency = model, min_mass, max(1, concurrency)
        self.id = f"openai:{model}@{base_url or 'https://api.openai.com/v1'}"
        self.calls = 0
        self._lock = threading.Lock()

    def _one(self, prompt: str) -> Score:
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
            logprobs=True, top_logprobs=20)
        with self._lock:
            self.calls += 1
        lp = r.choices[0].logprobs if r.choices else None
        if lp is None or not lp.content:
            return Score(None, 0.0, None)
        return Score.from_probs(number_probs(lp.content[0].top_logprobs), self.min_mass)

    def score(self, prompts: list[str]) -> list[Score]:
        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(self._one, prompts))

