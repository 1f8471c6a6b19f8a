"""Offline vLLM (`vllm.LLM`): the optional `vllm` extra, GPU machines. Imported only when
`generation.backend=vllm` is selected. LoRA adapters are applied per request through `LoRARequest`, so a base
model's weights load once for every adapter; `tensor_parallel_size` shards the model over GPUs."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import ConfigError
from . import Generation, Sampling, sample_seed

log = logging.getLogger(__name__)


def require_vllm(field: str = "generation.backend"):
    """The vllm module, or a ConfigError naming `field` (the option that selected vLLM)."""
    try:
        import vllm  # lazy: optional extra
    except ImportError as e:
        raise ConfigError(f"{field}=vllm needs vLLM, which is not importable ({e}): install the vllm "
                          "extra (pip install -e '.[vllm]') on a GPU machine", where=field) from e
    return vllm


def _import_vllm():
    vllm = require_vllm()
    from vllm.lora.request import LoRARequest  # lazy: optional extra

    return vllm, LoRARequest


class VLLMGenerator:
    def __init__(self, model, tokenizer=None, adapter: str | Path | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_lora_rank: int = 64, **llm_kw):
        vllm, LoRARequest = _import_vllm()
        self._tmp = None
        if not isinstance(model, (str, Path)):
            # an in-memory transformers model (what the stages hold, adapters merged): vLLM loads from disk
            self._tmp = tempfile.TemporaryDirectory(prefix="emrobust_vllm_")
            log.warning("vllm: saving the in-memory model to %s to load it (pass a path to avoid the copy)",
                        self._tmp.name)
            model.save_pretrained(self._tmp.name)
            if tokenizer is not None:
                tokenizer.save_pretrained(self._tmp.name)
            model = self._tmp.name
        self.llm = vllm.LLM(model=str(model), tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, enable_lora=adapter is not None,
                            max_lora_rank=max_lora_rank, **llm_kw)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter is not None else None
        self._SamplingParams = vllm.SamplingParams

    def generate(self, conversations: list[list[dict]], sampling: Sampling, n: int = 1) -> list[list[Generation]]:
        # one seed per request (its index in this call): the same prompt asked twice gets two samples, and a
        # request's samples do not depend on how vLLM schedules the others
        params = [self._SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                       repetition_penalty=sampling.repetition_penalty,
                                       max_tokens=sampling.max_new_tokens, seed=sample_seed(sampling.seed, i, 0))
                  for i in range(len(conversations))]
        outs = self.llm.chat(conversations, params, lora_request=self.lora, use_tqdm=len(conversations) >= 8)
        return [[Generation(o.text.strip(), len(o.token_ids), o.finish_reason == "stop") for o in r.outputs]
                for r in outs]
