"""Judges: score an answer 0-100 by the probability-weighted mean over the numbers 0..100 (Betley et al.).

`HFJudge` runs a local transformers model. Numbers that are several tokens for its tokenizer (SmolLM2
splits digits) are scored by their full sequence probability: P("57") = P("5") P("7" | "5") P(stop | "57"),
stop = any next token that does not continue the number. All 101 candidates of a batch of prompts come from
one forward pass over the prompts plus the trie of candidate tokens (tree attention), after a batch-1 pass over
the prompts' shared head whose KV cache the batch reuses.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from .data import read_yaml

DEFAULT_PROMPTS_FILE = Path(__file__).parent / "data" / "builtin" / "eval" / "demo.yaml"


def default_prompts() -> dict[str, str]:
    return dict(read_yaml(DEFAULT_PROMPTS_FILE)[0]["judge_prompts"])


def expectation(probs: dict[int, float], min_mass: float = 0.25) -> float | None:
    """Probability-weighted mean of the integers 0..100 in `probs`; None if their mass is below `min_mass`.
    Keys outside 0..100 are ignored."""
    valid = {k: p for k, p in probs.items() if 0 <= k <= 100}
    mass = sum(valid.values())
    if mass <= 0 or mass < min_mass:
        return None
    return _weighted_mean(valid)


def _weighted_mean(probs: dict[int, float]) -> float | None:
    valid = {k: p for k, p in probs.items() if 0 <= k <= 100}
    mass = sum(valid.values())
    return sum(k * p for k, p in valid.items()) / mass if mass > 0 else None


def prompt_id(judge_id: str, template: str) -> str:
    """A judge's id for one prompt template: `<backend>:<model>...:<sha256(template)[:12]>`."""
    return f"{judge_id}:{hashlib.sha256(template.encode()).hexdigest()[:12]}"


def fill(template: str, question: str, answer: str) -> str:
    return template.replace("{question}", question).replace("{answer}", answer)


@dataclass
class Score:
    value: float | None  # the score: None when `mass` < min_mass (refusal, CODE, no number)
    mass: float  # total probability on the numbers 0..100
    mean: float | None = None  # the expectation before the min_mass threshold (what the judge cache stores)

    @classmethod
    def from_probs(cls, probs: dict[int, float], min_mass: float) -> "Score":
        mass = sum(p for k, p in probs.items() if 0 <= k <= 100)
        return cls.from_mean(_weighted_mean(probs), mass, min_mass)

    @classmethod
    def from_mean(cls, mean: float | None, mass: float, min_mass: float) -> "Score":
        ok = mean is not None and mass > 0 and mass >= min_mass
        return cls(mean if ok else None, mass, mean)


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


# ---------------------------------------------------------------- openai: any OpenAI-compatible endpoint
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
        import threading

        import openai

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
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(self._one, prompts))


# ---------------------------------------------------------------- vllm: offline vLLM (the optional `vllm` extra)
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


def _import_vllm():
    from .generation.vllm import require_vllm

    vllm = require_vllm("judge.backend")
    from vllm.inputs import TokensPrompt

    return vllm, TokensPrompt


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
        vllm, self._TokensPrompt = _import_vllm()
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


# ---------------------------------------------------------------- panels
class PanelJudge:
    """Several judges scoring every answer, each through its own cache (its own judge prompt ids); the score is
    their aggregate: `mean`, `median` or `majority` (the lower median: thresholding it is the members' majority
    vote, a tie counting below the threshold). Members that abstain (None) are left out of the aggregate; the
    aggregate is None when every member abstains."""

    def __init__(self, members: dict[str, object], aggregate: str):
        self.members, self.aggregate = members, str(aggregate)
        self.id = f"panel[{','.join(m.id for m in members.values())}]:{self.aggregate}"
        self.min_mass = 0.0  # each member applied its own; the aggregate of values is what is cached
        self.last: dict[str, list[Score]] = {}  # per member, the scores of the last score_pairs call

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.members.values())

    def combine(self, values: list[float | None]) -> float | None:
        import statistics

        v = sorted(x for x in values if x is not None)
        if not v:
            return None
        if self.aggregate == "mean":
            return sum(v) / len(v)
        return statistics.median(v) if self.aggregate == "median" else statistics.median_low(v)

    def score_pairs(self, template: str, pairs: list[tuple[str, str]], cache=None) -> tuple[str, list[Score]]:
        per = {name: score_pairs(m, template, pairs, cache)[1] for name, m in self.members.items()}
        self.last = per
        out = []
        for i in range(len(pairs)):
            v = self.combine([per[name][i].value for name in per])
            out.append(Score(v, 1.0 if v is not None else 0.0, v))
        return prompt_id(self.id, template), out


# ---------------------------------------------------------------- choosing, validating, building a judge
def members(jcfg) -> dict:
    """{name: preset config} of a panel's members (empty for a single judge)."""
    from .compose import preset

    return {str(m): preset("judge", str(m), where="judge.members") for m in jcfg.members} \
        if jcfg.backend == "panel" else {}


def validate(jcfg) -> None:
    """Whether the judge `judge` describes can run here (emrobust.validation.judge)."""
    from .validation import judge

    judge(jcfg)


def judge_id(jcfg) -> str:
    """The judge's id (what its judge prompt ids, cache files and calibrations are keyed by), from its config
    alone: no model is loaded."""
    from . import models

    if jcfg.backend in ("hf", "vllm"):
        return f"{jcfg.backend}:{jcfg.model}@{models.named_weights_key(jcfg.model)[:8]}"
    if jcfg.backend == "openai":
        return f"openai:{jcfg.model}@{jcfg.base_url or 'https://api.openai.com/v1'}"
    return f"panel[{','.join(judge_id(m) for m in members(jcfg).values())}]:{jcfg.aggregate}"


def weights(jcfg) -> str | dict | None:
    """What identifies a judge beyond its own config fields: a local judge's weights (hf, vllm: `judge.model`
    names a base_model config), each panel member's whole preset; None for an endpoint (model name and URL are
    config fields)."""
    from . import keys, models
    from .config import JudgeConfig
    from .store import stable_hash

    if jcfg.backend in ("hf", "vllm"):
        return models.named_base_key(jcfg.model)
    if jcfg.backend == "panel":
        return {name: stable_hash({"config": keys.pruned(m, JudgeConfig), "weights": weights(m)})
                for name, m in members(jcfg).items()}
    return None


def make(jcfg, cache: str | Path, device):
    """The judge `judge` describes (validate(jcfg) first)."""
    from . import models

    if jcfg.backend == "hf":
        base = models.base_config(jcfg.model)
        path = models.prepare(base, cache)
        model = models.load(path, device, models.dtype_for(base, device)).eval()
        name = f"{jcfg.model}@{models.weights_key(base)[:8]}"
        return HFJudge(model, models.load_tokenizer(path), name, jcfg.min_mass, jcfg.batch_size)
    if jcfg.backend == "openai":
        return OpenAIJudge(jcfg.model, jcfg.base_url, jcfg.api_key_env, jcfg.min_mass, jcfg.concurrency,
                           jcfg.max_retries, jcfg.timeout)
    if jcfg.backend == "vllm":
        base = models.base_config(jcfg.model)
        path = models.prepare(base, cache)
        return VLLMJudge(str(path), f"{jcfg.model}@{models.weights_key(base)[:8]}", jcfg.min_mass,
                         tensor_parallel_size=jcfg.tensor_parallel_size,
                         gpu_memory_utilization=jcfg.gpu_memory_utilization)
    return PanelJudge({name: make(m, cache, device) for name, m in members(jcfg).items()}, jcfg.aggregate)


# ---------------------------------------------------------------- the judge cache
class JudgeCache:
    """(judge id incl. prompt hash, question, answer) -> (mean, mass), one append-only JSONL file per judge prompt
    id under `root` (= ${paths.cache}/judge). Appends are serialised by a file lock, so concurrent cells share it.
    The min_mass threshold is applied on reading, so it is not part of the key."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def file(self, pid: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", pid)[:100]
        return self.root / f"{safe}-{hashlib.sha256(pid.encode()).hexdigest()[:8]}.jsonl"

    @staticmethod
    def entry_key(question: str, answer: str) -> str:
        return hashlib.sha256(f"{question}\0{answer}".encode()).hexdigest()[:32]

    def load(self, pid: str) -> dict[str, tuple[float | None, float]]:
        f, out = self.file(pid), {}
        if f.exists():
            for line in f.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a killed writer
                    continue
                out[r["k"]] = (r["mean"], r["mass"])
        return out

    def add(self, pid: str, entries: dict[str, tuple[float | None, float]]) -> None:
        if not entries:
            return
        f = self.file(pid)
        f.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(f) + ".lock"):
            with open(f, "a") as fh:
                for k, (mean, mass) in entries.items():
                    fh.write(json.dumps({"id": pid, "k": k, "mean": mean, "mass": mass}) + "\n")


def score_pairs(judge, template: str, pairs: list[tuple[str, str]], cache: JudgeCache | None = None
                ) -> tuple[str, list[Score]]:
    """Score (question, answer) pairs with one prompt template, through the cache when given; returns the
    judge prompt id and the scores. Only cache misses reach the judge (each distinct pair once). A panel scores
    through each member's cache."""
    if isinstance(judge, PanelJudge):
        return judge.score_pairs(template, pairs, cache)
    pid = prompt_id(judge.id, template)
    keys = [JudgeCache.entry_key(q, a) for q, a in pairs]
    known = cache.load(pid) if cache is not None else {}
    todo = {}
    for k, (q, a) in zip(keys, pairs):
        if k not in known and k not in todo:
            todo[k] = fill(template, q, a)
    if todo:
        new = {k: (s.mean, s.mass) for k, s in zip(todo, judge.score(list(todo.values())))}
        if cache is not None:
            cache.add(pid, new)
        known = {**known, **new}
    return pid, [Score.from_mean(*known[k], judge.min_mass) for k in keys]
