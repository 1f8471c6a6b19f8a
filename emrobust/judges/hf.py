"""The local transformers judge: scores an answer 0-100 by the probability-weighted mean over the numbers 0..100 (Betley et al.).

`HFJudge` runs a local transformers model. Numbers that are several tokens for its tokenizer (SmolLM2
splits digits) are scored by their full sequence probability: P("57") = P("5") P("7" | "5") P(stop | "57"),
stop = any next token that does not continue the number. All 101 candidates of a batch of prompts come from
one forward pass over the prompts plus the trie of candidate tokens (tree attention), after a batch-1 pass over
the prompts' shared head whose KV cache the batch reuses.
"""
from __future__ import annotations

import inspect
import os

import torch

from . import Score, _weighted_mean, expectation, prompt_id


class HFJudge:
    """Local transformers judge. One forward pass per batch of prompts scores all 101 candidates: the prompt is
    followed by the trie of candidate-number token prefixes ("5", "57", "1", "10", "100", ...), each trie node
    attending to the prompt and to its own ancestors only (a custom 4D attention mask, tree attention).

    Speed (same numbers, less work): prompts are sorted by length before batching (little padding); the token
    prefix shared by every prompt of a batch (the judge template's head) runs once, batch 1, and its KV cache
    is repeated over the batch; the log-probabilities are gathered for all candidates at once (no full
    log-softmax over the vocabulary, no per-candidate Python loop)."""

    def __init__(self, model, tokenizer, name: str, min_mass: float = 0.25, batch_size: int = 8,
                 share_prefix: bool = True):
        self.model, self.tok, self.min_mass, self.batch_size = model, tokenizer, min_mass, batch_size
        self.share_prefix = share_prefix
        self.id = f"hf:{name}"
        self.calls = 0  # forward passes run (the judge cache test counts them)
        self.cands = [tuple(self.tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)]
        self.nodes = sorted({c[:i] for c in self.cands for i in range(1, len(c) + 1)}, key=lambda x: (len(x), x))
        self.node_of = {p: j for j, p in enumerate(self.nodes)}
        L = len(self.nodes)
        anc = torch.zeros((L, L), dtype=torch.bool)  # anc[j, k]: node k is a prefix of (or equal to) node j
        for j, p in enumerate(self.nodes):
            for i in range(1, len(p) + 1):
                anc[j, self.node_of[p[:i]]] = True
        self.ancestors = anc
        self.node_tok = torch.tensor([p[-1] for p in self.nodes])
        self.node_depth = torch.tensor([len(p) for p in self.nodes])
        # candidate n's t-th token is read from logits row rows[n, t] (0: after the prompt, 1 + j: after node j)
        D = max(len(c) for c in self.cands)
        self.cand_rows = torch.zeros((101, D), dtype=torch.long)
        self.cand_toks = torch.zeros((101, D), dtype=torch.long)
        self.cand_valid = torch.zeros((101, D), dtype=torch.bool)
        for n, c in enumerate(self.cands):
            for t, tid in enumerate(c):
                self.cand_rows[n, t] = 0 if t == 0 else 1 + self.node_of[c[:t]]
                self.cand_toks[n, t], self.cand_valid[n, t] = tid, True
        self.cand_end = torch.tensor([self.node_of[c] for c in self.cands])  # P(stop) read after the whole number
        vocab = self.model.get_input_embeddings().weight.shape[0]
        digit = torch.zeros(vocab, dtype=torch.bool)
        for tid in range(min(vocab, len(self.tok))):
            if self.tok.decode([tid]).lstrip()[:1].isdecimal():
                digit[tid] = True
        self.digit = digit  # tokens that would continue a number: P(stop) = 1 - their mass
        self.digit_ids = digit.nonzero().flatten()
        # the KV-cache argument's name: `cache` in recent transformers 5.x, `past_key_values` before
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def prompt_id(self, template: str) -> str:
        return prompt_id(self.id, template)

    def _encode(self, text: str) -> list[int]:
        chat = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        return self.tok(chat, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def probs(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 101) float64: P(the judge answers n, then stops), n = 0..100, in the prompts' order."""
        enc = [self._encode(p) for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))  # similar lengths share a batch
        out = torch.zeros((len(enc), 101), dtype=torch.float64)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            out[idx] = self._batch_probs([enc[i] for i in idx])
        return out

    def score(self, prompts: list[str]) -> list[Score]:
        results = []
        for row in self.probs(prompts).tolist():
            p = dict(enumerate(row))
            results.append(Score(expectation(p, self.min_mass), sum(row), _weighted_mean(p)))
        return results

    def _prefix_cache(self, enc: list[list[int]]):
        """(C, KV cache of the first C tokens, repeated over the batch): C = the token prefix every prompt of the
        batch shares, leaving each at least one token of its own. (0, None) when not worth it."""
        if not self.share_prefix or len(enc) < 2:
            return 0, None
        C = min(len(os.path.commonprefix(enc)), min(len(e) for e in enc) - 1)
        if C < 8:
            return 0, None
        self.calls += 1
        out = self.model(input_ids=torch.tensor([enc[0][:C]], device=self.model.device), use_cache=True,
                         logits_to_keep=1)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.batch_repeat_interleave(len(enc))
        return C, cache

    def _batch_probs(self, enc: list[list[int]]) -> torch.Tensor:
        dev = self.model.device
        C, cache = self._prefix_cache(enc)
        suf = [e[C:] for e in enc]
        B, S, L = len(suf), max(len(s) for s in suf), len(self.nodes)
        T = S + L  # new tokens this pass: [left padding, own prompt tokens][trie]; the shared prefix is cached
        ids = torch.full((B, T), self.tok.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        allowed = torch.zeros((B, T, C + T), dtype=torch.bool)
        allowed[:, :, :C] = True  # everything sees the shared prefix
        causal = torch.tril(torch.ones((S, S), dtype=torch.bool))
        for i, e in enumerate(suf):  # left padding: each prompt ends at S-1 (its first answer token's logits)
            n, pad = len(e), S - len(e)
            ids[i, pad:S] = torch.tensor(e)
            ids[i, S:] = self.node_tok
            pos[i, pad:S] = C + torch.arange(n)
            pos[i, S:] = C + n - 1 + self.node_depth
            real = torch.zeros(S, dtype=torch.bool)
            real[pad:] = True
            allowed[i, :S, C : C + S] = causal & real[None, :]
            allowed[i, :pad, C : C + pad] |= torch.eye(pad, dtype=torch.bool)  # padding rows see themselves
            allowed[i, S:, C : C + S] = real[None, :]
            allowed[i, S:, C + S :] = self.ancestors
        dtype = self.model.dtype
        mask = torch.zeros((B, 1, T, C + T), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        # logits only where needed: the last prompt token (first answer token) and every trie node
        self.calls += 1
        kv = {self._cache_arg: cache} if cache is not None else {}
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         use_cache=cache is not None, logits_to_keep=L + 1, **kv)
        logits = out.logits.float()  # (B, L+1, V); row 0 = after the prompt, row 1 + j = after trie node j
        lse = torch.logsumexp(logits, -1)  # (B, L+1)
        digit_mass = (logits[:, 1:, self.digit_ids.to(dev)] - lse[:, 1:, None]).exp().sum(-1)
        stop = (1.0 - digit_mass).clamp(min=0.0)  # (B, L): P(the number ends after node j)
        rows, toks, valid = (x.to(dev) for x in (self.cand_rows, self.cand_toks, self.cand_valid))
        tok_lp = logits[:, rows, toks] - lse[:, rows]  # (B, 101, D): log P(token t of candidate n | its prefix)
        logp = tok_lp.masked_fill(~valid, 0.0).sum(-1).double()
        return (logp.exp() * stop[:, self.cand_end.to(dev)].double()).cpu()  # (B, 101)

