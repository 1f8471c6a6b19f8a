"""One generation interface for every stage (teacher/student, introspection, evaluation).

A backend takes chat conversations and sampling parameters and returns one `Generation` per
(conversation, sample), chosen by `generation.backend`:
- `hf`: batched `transformers.generate` on the pipeline's in-memory model (the default);
- `vllm`: offline `vllm.LLM` (optional `vllm` extra, GPU), LoRA adapters through `LoRARequest`;
- `openai`: any OpenAI-compatible server (`generation.base_url`, `generation.model`). The *served* model answers,
  not the pipeline's: use it for evaluation or teacher sampling from an external server (e.g. `vllm serve` of a
  fold output on the cluster). Its endpoint and model name are part of the keys of the stages that generate.

Sampling is seeded per sample (`Sampling.seed` with the sample's index in the request), so what a sample says
does not depend on how requests are batched (see generation/hf.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Protocol

from omegaconf import OmegaConf

from ..config import GenerationConfig
from ..core import distributed
from ..errors import ConfigError, Unmet


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


def sample_seed(seed: int, conversation: int, sample: int) -> int:
    """The seed of one sample: a function of (sampling seed, the conversation's index in the request, the sample's
    index among its `n`) alone, so that neither the batch it lands in nor the other requests change it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{conversation}:{sample}".encode()).digest()[:4], "little") >> 1


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


def _as_cfg(gcfg, batch_size: int | None):
    """`make`'s first argument: the `generation` config node, or just a backend name (tests, benchmarks)."""
    if isinstance(gcfg, str):
        gcfg = OmegaConf.structured(GenerationConfig(backend=gcfg))
    if batch_size is not None:
        gcfg = OmegaConf.merge(gcfg, {"batch_size": batch_size})
    return gcfg


def validate_openai(node, prefix: str, model_noun: str) -> None:
    """Checks shared by every OpenAI-compatible client (generation and the judge): package, model, key, threads."""
    if importlib.util.find_spec("openai") is None:  # a package to install: the dry-run lists it as a gate
        raise Unmet(f"{prefix}.backend=openai needs the openai package: pip install -e '.[openai]'",
                    kind="package", what="openai", where=f"{prefix}.backend")
    if not node.model:
        raise ConfigError(f"{prefix}.model must name {model_noun} ({prefix}.backend=openai)", where=f"{prefix}.model")
    if node.api_key_env and not os.environ.get(node.api_key_env):
        raise Unmet(f"environment variable {node.api_key_env} ({prefix}.api_key_env) is not set; set it, "
                    f"or {prefix}.api_key_env=null for a keyless server", kind="key", what=node.api_key_env,
                    where=f"{prefix}.api_key_env")


def validate_vllm(field: str) -> None:
    """Login-time check that vLLM is installed, without importing it (ConfigError naming the selecting field)."""
    if importlib.util.find_spec("vllm") is None:
        raise Unmet(f"{field}=vllm needs vLLM, which is not importable: install the vllm extra "
                    "(pip install -e '.[vllm]') on a GPU machine", kind="package", what="vllm", where=field)


def validate(gcfg) -> None:
    """Whether the `generation` backend can run here, before any model loads (ConfigError naming the field); the
    ranges of its settings are the schema's (emrobust.engine.validation)."""
    if gcfg.backend == "openai":
        validate_openai(gcfg, "generation", "the served model")
    elif gcfg.backend == "vllm":
        validate_vllm("generation.backend")


class Rank0Generator:
    """In a multi-process run (see emrobust.core.distributed): rank 0 generates, every rank gets rank 0's texts, so
    all ranks train on the same data. Ranks > 0 never build the backend."""

    def __init__(self, build):
        self._dist = distributed
        self._inner = build() if distributed.is_main() else None

    def generate(self, conversations, sampling, n: int = 1):
        return self._dist.rank0_compute(lambda: self._inner.generate(conversations, sampling, n=n))


def make(gcfg, model=None, tokenizer=None, batch_size: int | None = None, adapter=None) -> Generator:
    if distributed.active():
        return Rank0Generator(lambda: _make(gcfg, model, tokenizer, batch_size, adapter))
    return _make(gcfg, model, tokenizer, batch_size, adapter)


def _make(gcfg, model=None, tokenizer=None, batch_size: int | None = None, adapter=None) -> Generator:
    """The generator `gcfg` (the `generation` config node, or a backend name) describes.

    hf: `model`/`tokenizer` are the in-memory transformers model and tokenizer. vllm: `model` is a path to
    weights (a transformers model is saved to a temporary folder first), `adapter` an optional LoRA folder.
    openai: `model`/`tokenizer` are ignored: the server's own model (`generation.model`) answers."""
    gcfg = _as_cfg(gcfg, batch_size)
    if gcfg.backend == "hf":
        from .hf import HFGenerator  # lazy: slow import

        if adapter is not None:
            raise ValueError("generation.backend=hf takes a merged model, not an adapter")
        return HFGenerator(model, tokenizer, batch_size=gcfg.batch_size)
    if gcfg.backend == "openai":
        from .openai import OpenAIGenerator  # lazy: backend

        if adapter is not None:
            raise ValueError("generation.backend=openai samples the served model; it takes no adapter")

        logging.getLogger(__name__).info(
            "generation.backend=openai: answers come from %r at %s, not from the pipeline's own weights",
            gcfg.model, gcfg.base_url or "https://api.openai.com/v1")
        return OpenAIGenerator(gcfg.model, gcfg.base_url, gcfg.api_key_env, gcfg.concurrency, gcfg.max_retries,
                               gcfg.timeout, OmegaConf.to_container(gcfg.extra_body, resolve=True))
    if gcfg.backend == "vllm":
        from .vllm import VLLMGenerator  # lazy: backend

        return VLLMGenerator(model, tokenizer, adapter=adapter, tensor_parallel_size=gcfg.tensor_parallel_size,
                             gpu_memory_utilization=gcfg.gpu_memory_utilization, max_lora_rank=gcfg.max_lora_rank)
    raise ValueError(f"generation.backend={gcfg.backend!r} is not available")
