"""`generation.*`: how every stage that writes text samples it (hf, vllm, an OpenAI-compatible server), and the
sampling settings the stages share."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional

from .schema import openai_backend as _openai
from .schema import setting


class Backend(StrEnum):
    hf = "hf"
    openai = "openai"
    vllm = "vllm"


@dataclass
class SamplingConfig:
    temperature: float = setting(0.7, ge=0)
    top_p: float = setting(0.95, gt=0, le=1, when=lambda s: s.temperature > 0)
    repetition_penalty: float = setting(1.1, gt=0)
    max_new_tokens: int = setting(512, ge=1)


@dataclass
class GenerationConfig:
    backend: Backend = Backend.hf  # hf | vllm | openai (emrobust/generation/__init__.py)
    batch_size: int = setting(16, ge=1, execution="sequences per generate call; sampling is seeded per sample "
                                            "(emrobust/generation/hf.py), so the texts do not depend on it")
    # openai: an external OpenAI-compatible server. The *served* model answers, not the pipeline's: for evaluation or
    # teacher sampling from e.g. `vllm serve` of a fold output on the cluster. The API key is read from the
    # environment variable named here (null = keyless server), never stored.
    base_url: Optional[str] = setting(None, when=_openai)
    model: Optional[str] = setting(None, when=_openai)
    api_key_env: Optional[str] = setting("OPENAI_API_KEY", execution="names the variable holding the key, "
                                                                     "never the key")
    concurrency: int = setting(8, ge=1, execution="parallel requests (n samples are n requests)")
    max_retries: int = setting(6, ge=0, execution="the openai client's retries with backoff")
    timeout: float = setting(300.0, gt=0, execution="seconds per request before a retry")
    # extra request fields for the server's own sampling knobs, e.g. llama.cpp's server defaults to top_k=40,
    # min_p=0.05: {top_k: 0, min_p: 0.0}. repetition_penalty is always sent (vLLM's and llama.cpp's names)
    # except to api.openai.com, which has no such parameter.
    extra_body: dict[str, Any] = setting(factory=dict, when=_openai)
    # vllm: offline vllm.LLM
    tensor_parallel_size: int = setting(1, ge=1, execution="shards the same weights over GPUs")
    gpu_memory_utilization: float = setting(0.85, gt=0, le=1, execution="vLLM's memory budget")
    max_lora_rank: int = setting(64, ge=1, execution="the size of vLLM's LoRA slots (at least the adapter's rank)")
