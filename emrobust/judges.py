"""Judges: score an answer 0-100 by the probability-weighted mean over the numbers 0..100 (Betley et al.).

`HFJudge` runs a local transformers model. Numbers that are several tokens for its tokenizer (SmolLM2
splits digits) are scored by their full sequence probability: P("57") = P("5") P("7" | "5") P(stop | "57"),
stop = any next token that does not continue the number. All 101 candidates of one prompt share a single
forward pass over the prompt (KV cache) plus one batched pass over the candidate tokens.
"""
from __future__ import annotations

import hashlib
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
    """Local transformers judge. One forward pass per batch of prompts scores all 101 candidates: the prompt is
    followed by the trie of candidate-number token prefixes ("5", "57", "1", "10", "100", ...), each trie node
    attending to the prompt and to its own ancestors only (a custom 4D attention mask, tree attention)."""

    def __init__(self, model, tokenizer, name: str, min_mass: float = 0.25, batch_size: int = 8):
        self.model, self.tok, self.min_mass, self.batch_size = model, tokenizer, min_mass, batch_size
        self.id = f"hf:{name}"
        self.cands = [tuple(self.tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)]
        self.nodes = sorted({c[:i] for c in self.cands for i in range(1, len(c) + 1)}, key=lambda x: (len(x), x))
        self.node_of = {p: j for j, p in enumerate(self.nodes)}
        L = len(self.nodes)
        anc = torch.zeros((L, L), dtype=torch.bool)  # anc[j, k]: node k is a prefix of (or equal to) node j
        for j, p in enumerate(self.nodes):
            for i in range(1, len(p) + 1):
                anc[j, self.node_of[p[:i]]] = True
        self.ancestors = anc
        vocab = self.model.get_input_embeddings().weight.shape[0]
        digit = torch.zeros(vocab, dtype=torch.bool)
        for tid in range(min(vocab, len(self.tok))):
            if self.tok.decode([tid]).lstrip()[:1].isdecimal():
                digit[tid] = True
        self.digit = digit  # tokens that would continue a number: P(stop) = 1 - their mass

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
        B, P, L = len(enc), max(len(e) for e in enc), len(self.nodes)
        T = P + L
        ids = torch.full((B, T), self.tok.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        allowed = torch.zeros((B, T, T), dtype=torch.bool)
        causal = torch.tril(torch.ones((P, P), dtype=torch.bool))
        node_tok = torch.tensor([p[-1] for p in self.nodes])
        node_depth = torch.tensor([len(p) for p in self.nodes])
        for i, e in enumerate(enc):  # left padding: the prompt ends at position P-1 in every row
            n, pad = len(e), P - len(e)
            ids[i, pad:P] = torch.tensor(e)
            ids[i, P:] = node_tok
            pos[i, pad:P] = torch.arange(n)
            pos[i, P:] = n - 1 + node_depth
            real = torch.zeros(P, dtype=torch.bool)
            real[pad:] = True
            allowed[i, :P, :P] = causal & real[None, :]
            allowed[i, :pad, :pad] |= torch.eye(pad, dtype=torch.bool)  # padding rows see themselves (no NaN)
            allowed[i, P:, :P] = real[None, :]
            allowed[i, P:, P:] = self.ancestors
        dtype = self.model.dtype
        mask = torch.zeros((B, 1, T, T), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        # logits only where needed: the last prompt token (first answer token) and every trie node
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         logits_to_keep=L + 1, use_cache=False)
        lp = torch.log_softmax(out.logits.float(), -1)  # (B, L+1, V); index 0 = after the prompt
        stop = (1.0 - lp[:, 1:].exp()[..., self.digit.to(dev)].sum(-1)).clamp(min=0.0)  # (B, L)
        results = []
        for b in range(B):
            probs = {}
            for n, c in enumerate(self.cands):
                s = lp[b, 0, c[0]]
                for t in range(1, len(c)):
                    s = s + lp[b, 1 + self.node_of[c[:t]], c[t]]
                probs[n] = math.exp(s.item()) * stop[b, self.node_of[c]].item()
            results.append(Score(expectation(probs, self.min_mass), sum(probs.values())))
        return results
