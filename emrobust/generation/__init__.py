"""One generation interface for every stage (teacher/student, introspection, evaluation).

A backend takes chat conversations and sampling parameters and returns one `Generation` per
(conversation, sample). `hf` is built in; `vllm` and `openai` plug in behind the same `Generator` protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg, seed: int, **over) -> "Sampling":
        kw = {k: cfg[k] for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens") if k in cfg}
        kw.update(over)
        return cls(seed=seed, **kw)


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finished: bool  # ended on EOS rather than on the token limit


class Generator(Protocol):
    def generate(self, conversations: list[list[dict]], sampling: Sampling, n: int = 1) -> list[list[Generation]]:
        """For each conversation, `n` sampled continuations of the assistant turn (a conversation ending on an
        assistant message is a prefill: its continuation is returned)."""
        ...


def make(backend: str, model, tokenizer, batch_size: int = 16) -> Generator:
    if backend == "hf":
        from .hf import HFGenerator

        return HFGenerator(model, tokenizer, batch_size=batch_size)
    raise ValueError(f"generation.backend={backend!r} is not available (hf)")
