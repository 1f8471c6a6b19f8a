"""Batched `transformers.generate`: left padding, length-sorted buckets, stop at EOS, sampling seeded per sample.

Sampling is the Gumbel-max trick: transformers' own processors (repetition penalty) and warpers (temperature,
top-p) shape each row's next-token scores, then `PerSampleGumbel` adds Gumbel(0, 1) noise drawn from that
sample's own generator (`generation.sample_seed`) and decoding takes the argmax. argmax(scores + Gumbel noise)
is an exact draw from softmax(scores), the distribution `do_sample=True` samples, but each sample's random
numbers depend on its own seed and step only: the text a sample gets does not depend on the batch size, the
order of the batches or the other prompts (up to float rounding of padded batches, which would have to flip a
near-tie to change a token).
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from . import Generation, Sampling, sample_seed


class PerSampleGumbel:
    """A logits processor that adds to each row Gumbel noise from that row's own torch.Generator.

    The noise of a step is drawn row by row (each row's generator writes its row of one buffer) and turned into
    Gumbel noise in place: no per-row tensors, no stacking, one (batch, vocab) float32 buffer reused every step."""

    def __init__(self, seeds: list[int], device):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self._buf: torch.Tensor | None = None

    def __call__(self, input_ids, scores):
        B, V = len(self.gens), scores.shape[-1]
        if self._buf is None or self._buf.shape != (B, V) or self._buf.device != scores.device:
            self._buf = torch.empty((B, V), dtype=torch.float32, device=scores.device)
        u = self._buf
        for row, g in zip(u, self.gens):
            torch.rand(V, generator=g, out=row)
        # Gumbel(0, 1) = -log(-log(u)), computed in place
        u.clamp_(min=1e-20, max=1.0 - 1e-7).log_().neg_().log_().neg_()
        return scores.float() + u


class HFGenerator:
    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size

    def render(self, conversation: list[dict]) -> str:
        """The prompt text: a new assistant turn, or, when the conversation ends on an assistant message (a
        prefill), the continuation of that message."""
        if conversation and conversation[-1]["role"] == "assistant":
            return self.tok.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
        return self.tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def _processors(self, sampling: Sampling, seeds: list[int]):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper  # lazy: slow import

        procs = [TemperatureLogitsWarper(sampling.temperature)]
        if sampling.top_p < 1.0:
            procs.append(TopPLogitsWarper(sampling.top_p))
        procs.append(PerSampleGumbel(seeds, self.model.device))
        return LogitsProcessorList(procs)

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], sampling: Sampling, n: int = 1) -> list[list[Generation]]:
        prompts = [self.render(c) for c in conversations]
        encoded = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        # longest first: similar lengths share a batch, little padding, and OOM shows up early
        jobs.sort(key=lambda ij: -len(encoded[ij[0]]))
        out: list[list[Generation | None]] = [[None] * n for _ in prompts]
        do_sample = sampling.temperature > 0
        eos = self.tok.eos_token_id
        self.model.eval()
        was_side, self.tok.padding_side = self.tok.padding_side, "left"
        bar = tqdm(total=len(jobs), desc="generate", unit="seq", leave=False, disable=len(jobs) < 8)
        t0, n_tok = time.time(), 0
        try:
            for b in range(0, len(jobs), self.batch_size):
                batch = jobs[b : b + self.batch_size]
                enc = self.tok.pad({"input_ids": [encoded[i] for i, _ in batch]}, return_tensors="pt")
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                # greedy decoding over our processors: with PerSampleGumbel last, the argmax is a sample
                kw = dict(max_new_tokens=sampling.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                          top_k=None, pad_token_id=self.tok.pad_token_id, eos_token_id=eos,
                          repetition_penalty=sampling.repetition_penalty)
                if do_sample:
                    kw["logits_processor"] = self._processors(
                        sampling, [sample_seed(sampling.seed, i, j) for i, j in batch])
                seqs = self.model.generate(**enc, **kw)
                new = seqs[:, enc["input_ids"].shape[1] :]
                for (i, j), row in zip(batch, new):
                    ids = row.tolist()
                    finished = eos in ids
                    if finished:
                        ids = ids[: ids.index(eos)]
                    n_tok += len(ids)
                    out[i][j] = Generation(self.tok.decode(ids, skip_special_tokens=True).strip(), len(ids), finished)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):.0f}")
        finally:
            self.tok.padding_side = was_side
            bar.close()
        return out  # type: ignore[return-value]
