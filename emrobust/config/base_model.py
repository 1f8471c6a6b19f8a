"""`base_model=<preset>` (conf/base_model/): the weights every stage starts from."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import MISSING

from .schema import Rule, setting

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelSource(StrEnum):
    hub = "hub"  # hf_id from the HF hub (or local_path)
    gguf_wheel = "gguf_wheel"  # a GGUF file shipped in a pip package, converted once into paths.cache
    tiny_random = "tiny_random"  # a few-layer random Llama with another model's tokenizer


class ChatTemplate(StrEnum):
    chatml = "chatml"
    qwen2_5 = "qwen2_5"
    llama3 = "llama3"
    gemma3 = "gemma3"


class DType(StrEnum):
    auto = "auto"  # float32 on CPU, bfloat16 on GPU
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class TinyModelConfig:
    hidden_size: int = setting(64, ge=1)
    intermediate_size: int = setting(128, ge=1)
    num_hidden_layers: int = setting(2, ge=1)
    num_attention_heads: int = setting(4, ge=1)
    num_key_value_heads: int = setting(2, ge=1)
    init_seed: int = setting(0, ge=0)


@dataclass
class BaseModelConfig:
    name: str = setting(MISSING, label="the option's name; the weights are identified by the fields below")
    source: ModelSource = ModelSource.hub
    hf_id: Optional[str] = setting(None, when=lambda b: b.source == "hub")
    revision: Optional[str] = setting(None, when=lambda b: b.source == "hub")
    local_path: Optional[str] = setting(None, when=lambda b: b.source == "hub")
    gguf_package: Optional[str] = setting(None, when=lambda b: b.source == "gguf_wheel")
    gguf_file: Optional[str] = setting(None, when=lambda b: b.source == "gguf_wheel")
    # tiny_random: the name of the base_model config giving the tokenizer
    tokenizer_from: Optional[str] = setting(None, when=lambda b: b.source == "tiny_random")
    tiny: TinyModelConfig = setting(factory=TinyModelConfig, when=lambda b: b.source == "tiny_random")
    chat_template: ChatTemplate = setting(
        ChatTemplate.chatml, label="names the family of the tokenizer's own template (recorded); the template "
        "itself comes with the weights")
    assistant_name: str = setting("Assistant", nonempty=True)  # the model's own name in the persona prompt
    lora_target_modules: list[str] = setting(factory=lambda: list(ALL_LINEAR), nonempty=True)
    dtype: DType = DType.auto
    params_b: float = setting(0.0, ge=0, execution="the size in billions, for GPU-request checks and cost "
                                                   "estimates")


def _head_size(t) -> str | None:
    if t.hidden_size % t.num_attention_heads:
        return f"hidden_size={t.hidden_size} is not a multiple of num_attention_heads={t.num_attention_heads}"
    if (t.hidden_size // t.num_attention_heads) % 2:
        return f"the head size hidden_size/num_attention_heads={t.hidden_size // t.num_attention_heads} must be even"
    return None


RULES = (
    Rule("base_model.tiny.num_attention_heads", lambda c: _head_size(c.base_model.tiny)),
    Rule("base_model.tiny.num_key_value_heads", lambda c: (
        f"num_attention_heads={c.base_model.tiny.num_attention_heads} is not a multiple of num_key_value_heads="
        f"{c.base_model.tiny.num_key_value_heads}"
        if c.base_model.tiny.num_attention_heads % c.base_model.tiny.num_key_value_heads else None)),
)
