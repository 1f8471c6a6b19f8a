"""Judges: score an answer 0-100 by the probability-weighted mean over the numbers 0..100 (Betley et al.).

`HFJudge` runs a local transformers model. Numbers that are several tokens for its tokenizer (SmolLM2
splits digits) are scored by their full sequence probability: P("57") = P("5") P("7" | "5") P(stop | "57"),
stop = any next token that does not continue the number. All 101 candidates of one prompt share a single
forward pass over the prompt (KV cache) plus one batched pass over the candidate tokens.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

DEFAULT_PROMPTS_FILE = Path(__file__).parent / "data" / "builtin" / "eval" / "demo.yaml"


def default_prompts() -> dict[str, str]:
    return dict(yaml.safe_load(DEFAULT_PROMPTS_FILE.read_text())[0]["judge_prompts"])


def expectation(probs: dict[int, float], min_mass: float = 0.25) -> float | None:
    """Probability-weighted mean of the integers 0..100 in `probs`; None if their mass is below `min_mass`.
    Keys outside 0..100 are ignored."""
    valid = {k: p for k, p in probs.items() if 0 <= k <= 100}
    mass = sum(valid.values())
    if mass <= 0 or mass < min_mass:
        return None
    return sum(k * p for k, p in valid.items()) / mass


@dataclass
class Score:
    value: float | None
    mass: float


class HFJudge:
    def __init__(self, model, tokenizer, name: str, min_mass: float = 0.25, batch_size: int = 8):
        self.model, self.tok, self.min_mass, self.batch_size = model, tokenizer, min_mass, batch_size
        self.id = f"hf:{name}"
        cands = [self.tok(str(n), add_special_tokens=False)["input_ids"] for n in range(101)]
        self.cands = cands
        # rows to run: candidates that are not a proper prefix of another candidate ("10" is inside "100")
        tuples = [tuple(c) for c in cands]
        self.rows = [c for c in tuples if not any(len(o) > len(c) and o[: len(c)] == c for o in tuples)]
        self.row_of = [next(i for i, r in enumerate(self.rows) if r[: len(c)] == tuple(c)) for c in cands]
        self.width = max(len(r) for r in self.rows)
        vocab = self.model.get_input_embeddings().weight.shape[0]
        digit = torch.zeros(vocab, dtype=torch.bool)
        for tid in range(min(vocab, len(self.tok))):
            s = self.tok.decode([tid]).lstrip()
            if s[:1].isdigit():
                digit[tid] = True
        self.digit = digit
        # transformers >= 5.2x names the KV-cache argument `cache` (older: `past_key_values`)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def prompt_id(self, template: str) -> str:
        return f"{self.id}:{hashlib.sha256(template.encode()).hexdigest()[:12]}"

    def _encode(self, text: str) -> list[int]:
        chat = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        return self.tok(chat, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def score(self, prompts: list[str]) -> list[Score]:
        out: list[Score] = []
        for b in range(0, len(prompts), self.batch_size):
            out += self._score_batch(prompts[b : b + self.batch_size])
        return out

    def _score_batch(self, prompts: list[str]) -> list[Score]:
        dev = self.model.device
        enc = [self._encode(p) for p in prompts]
        B, P, R, W = len(enc), max(len(e) for e in enc), len(self.rows), self.width
        pad = self.tok.pad_token_id
        ids = torch.full((B, P), pad, dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        for i, e in enumerate(enc):  # left padding
            ids[i, P - len(e) :] = torch.tensor(e)
            mask[i, P - len(e) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        o = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        first = torch.log_softmax(o.logits[:, -1].float(), -1)  # (B, V): distribution of the first answer token
        cache = getattr(o, "cache", None) or o.past_key_values
        cache.batch_repeat_interleave(R)
        rows = torch.full((R, W), pad, dtype=torch.long)
        for r, c in enumerate(self.rows):
            rows[r, : len(c)] = torch.tensor(c)
        rows = rows.to(dev).repeat(B, 1)  # (B*R, W), right padded; padding sits after each candidate
        lengths = mask.sum(1)
        cpos = (lengths[:, None] + torch.arange(W, device=dev)[None]).repeat_interleave(R, 0)
        cmask = torch.cat([mask.repeat_interleave(R, 0), torch.ones((B * R, W), dtype=torch.long, device=dev)], 1)
        o2 = self.model(input_ids=rows, attention_mask=cmask, position_ids=cpos, use_cache=False,
                        **{self._cache_kw: cache})
        lp = torch.log_softmax(o2.logits.float(), -1).view(B, R, W, -1)
        digit = self.digit.to(dev)
        results = []
        for b in range(B):
            probs = {}
            for n, c in enumerate(self.cands):
                r = self.row_of[n]  # the row that holds candidate c as a prefix
                s = first[b, c[0]].item()
                for t in range(1, len(c)):
                    s += lp[b, r, t - 1, c[t]].item()
                stop = 1.0 - lp[b, r, len(c) - 1].exp()[digit].sum().item()
                probs[n] = math.exp(s) * max(stop, 0.0)
            mass = sum(probs.values())
            results.append(Score(expectation(probs, self.min_mass), mass))
        return results
