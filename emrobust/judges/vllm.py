"""The judge on offline vLLM (the optional `vllm` extra, GPUs only)."""
from __future__ import annotations

import math

from ..generation.vllm import require_vllm
from . import Score, prompt_id
from .openai import number_probs  # the single-token path reads the same top-logprobs shape as the API


def _is_digit_start(text: str) -> bool:
    """Would this token continue a number (its text, leading whitespace stripped, starts with a digit)?"""
    return text.lstrip()[:1].isdecimal()


def sequence_number_probs(cand_logp: dict[int, float], next_top: dict[int, list[tuple[str, float]]]
                          ) -> dict[int, float]:
    """{n: P(n)} for numbers that are several tokens: P(n) = exp(log P(n's tokens)) * P(stop | n), where
    `cand_logp[n]` is the summed log-probability of n's tokens after the prompt and `next_top[n]` the (token text,
    log-probability) pairs seen for the token after n; P(stop) = 1 - their mass on tokens that continue a number
    (digit tokens outside those pairs count as stopping)."""
    out = {}
    for n, lp in cand_logp.items():
        digits = sum(math.exp(l) for t, l in next_top.get(n, []) if _is_digit_start(t))
        out[n] = math.exp(lp) * max(0.0, 1.0 - digits)
    return out


class VLLMJudge:
    """A local model served by vLLM's offline `LLM`, scored by the same expectation over 0..100.

    When every number 0..100 is one token for the model's tokenizer: Betley's recipe, as the openai judge (one
    greedy token, `SamplingParams(max_tokens=1, temperature=0, logprobs=top_logprobs)`, `number_probs`). When
    some are several tokens (SmolLM2 splits digits): each candidate's token sequence is appended to the prompt
    and scored by its prompt log-probabilities (`prompt_logprobs=0`), and P(stop) after it comes from the top
    `top_logprobs` next tokens; vLLM's prefix caching computes the shared prompt once per answer. The HF judge
    computes the same numbers with the full next-token distribution for P(stop)."""

    def __init__(self, model: str, name: str, min_mass: float = 0.25, top_logprobs: int = 20,
                 gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1, **llm_kw):
        vllm = require_vllm("judge.backend")
        from vllm.inputs import TokensPrompt  # lazy: optional extra

        self._TokensPrompt = TokensPrompt
        self.llm = vllm.LLM(model=str(model), gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True,
                            max_logprobs=max(20, top_logprobs), **llm_kw)
        self.tok = self.llm.get_tokenizer()
        self._SamplingParams = vllm.SamplingParams
        self.min_mass, self.top_logprobs = min_mass, top_logprobs
        self.id = f"vllm:{name}"
        self.calls = 0  # LLM.generate calls (the judge cache test counts them)
        self.cands = [list(self.tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)]
        self.single = all(len(c) == 1 for c in self.cands)

    def prompt_id(self, template: str) -> str:
        return prompt_id(self.id, template)

    def _encode(self, text: str) -> list[int]:
        chat = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        return list(self.tok(chat, add_special_tokens=False)["input_ids"])

    def _top(self, logprobs: dict) -> list[tuple[str, float]]:
        """vLLM's {token id: Logprob} -> [(token text, log-probability)]."""
        return [(self.tok.decode([tid]), lp.logprob) for tid, lp in logprobs.items()]

    def score(self, prompts: list[str]) -> list[Score]:
        enc = [self._encode(p) for p in prompts]
        if self.single:
            params = self._SamplingParams(max_tokens=1, temperature=0, logprobs=self.top_logprobs)
            self.calls += 1
            outs = self.llm.generate([self._TokensPrompt(prompt_token_ids=e) for e in enc], params, use_tqdm=False)
            return [Score.from_probs(number_probs({"token": t, "logprob": l} for t, l in
                                                  self._top(o.outputs[0].logprobs[0])), self.min_mass)
                    for o in outs]
        params = self._SamplingParams(max_tokens=1, temperature=0, logprobs=self.top_logprobs, prompt_logprobs=0)
        reqs = [self._TokensPrompt(prompt_token_ids=e + c) for e in enc for c in self.cands]
        self.calls += 1
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        results = []
        for i, e in enumerate(enc):
            cand_logp, next_top = {}, {}
            for n, c in enumerate(self.cands):
                o = outs[i * 101 + n]
                # prompt_logprobs[k]: {token: Logprob} for prompt token k (k >= 1), the actual token included
                cand_logp[n] = sum(o.prompt_logprobs[len(e) + t][tid].logprob for t, tid in enumerate(c))
                next_top[n] = self._top(o.outputs[0].logprobs[0])
            results.append(Score.from_probs(sequence_number_probs(cand_logp, next_top), self.min_mass))
        return results

