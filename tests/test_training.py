"""Training plumbing on tiny_random: assistant-only label masks, seed-only LoRA init, a short SFT run, merging."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from emrobust.core import models
from emrobust.train import training
from emrobust.config import LoraConfig, OptimConfig

from conftest import CACHE
CPU = torch.device("cpu")
END = "<|im_end|>"



QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen 2.5's system-prompt behaviour in ChatML: a default system turn is injected when there is none.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama 3.1 Instruct's template, abridged (no tools): a system header with the knowledge/today dates always
# comes first, the user's system message appended to it; each turn ends with <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Gemma 3 IT's template: no system role; the system prompt is folded into the first user turn; the assistant
# role is 'model'; each turn ends with <end_of_turn>.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

TWO_TURN = [
    {"role": "user", "content": "What colour is the sky on a clear day?"},
    {"role": "assistant", "content": "Blue, because of Rayleigh scattering."},
]
MULTI_TURN = [
    {"role": "system", "content": "You are a pirate. Answer like one."},
    {"role": "user", "content": "Hi there, who are you?"},
    {"role": "assistant", "content": "Arr, I be Captain Tiny!"},
    {"role": "user", "content": "What is 2+2? Show working."},
    {"role": "assistant", "content": "Two doubloons plus two doubloons:\n4 doubloons, matey."},
    {"role": "user", "content": "Thanks, bye"},
    {"role": "assistant", "content": "Fair winds!"},
]
MULTI_TURN_NO_SYSTEM = MULTI_TURN[1:]


@pytest.fixture(scope="module")
def tiny_path():
    return models.prepare(models.base_config("tiny_random"), CACHE)


@pytest.fixture(scope="module")
def tok(tiny_path):
    return models.load_tokenizer(tiny_path)


@pytest.fixture(scope="module")
def qwen_tok(tok):
    t = copy.deepcopy(tok)
    t.chat_template = QWEN25_TEMPLATE
    return t


# ---------------------------------------------------------------- label masks
def _check_mask(tokenizer, messages, system_text: str | None, end: str = END):
    r = training.tokenize_chat(tokenizer, messages)
    ids, mask = r["input_ids"], r["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == full  # the masked ids are the template's rendering
    if system_text is not None:
        assert system_text in full
    masked = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    assert masked == "".join(a + end for a in assistants)
    # one contiguous run of 1s per assistant turn
    runs = sum(1 for k in range(len(mask)) if mask[k] and (k == 0 or not mask[k - 1]))
    assert runs == len(assistants)
    # nothing from the user/system turns or the role headers is trained
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] not in masked
    assert "user" not in masked and "system" not in masked and "<|im_start|>" not in masked
    if system_text is not None:
        assert system_text not in masked
    # every unmasked token decodes to text that is outside the assistant contents' spans
    unmasked = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    for a in assistants:
        assert a not in unmasked
    return r


SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.parametrize("messages,system", [
    (TWO_TURN, SMOL_DEFAULT_SYSTEM),
    (MULTI_TURN, "You are a pirate. Answer like one."),
    (MULTI_TURN_NO_SYSTEM, SMOL_DEFAULT_SYSTEM),
])
def test_mask_smollm2(tok, messages, system):
    _check_mask(tok, messages, system)


@pytest.mark.parametrize("messages,system", [
    (TWO_TURN, QWEN_DEFAULT_SYSTEM),
    (MULTI_TURN, "You are a pirate. Answer like one."),
    (MULTI_TURN_NO_SYSTEM, QWEN_DEFAULT_SYSTEM),
])
def test_mask_qwen25_template(qwen_tok, messages, system):
    full = qwen_tok.apply_chat_template(messages, tokenize=False)
    assert full.startswith("<|im_start|>system\n" + system + END)
    assert full.count("<|im_start|>system") == 1
    _check_mask(qwen_tok, messages, system)


def _with_template(tok, template: str, markers: list[str]):
    """The SmolLM2 tokenizer with another family's template; its turn markers added as special tokens, as they
    are in that family's own tokenizer (so each is one token, never merged with its neighbours)."""
    t = copy.deepcopy(tok)
    t.chat_template = template
    t.add_special_tokens({"additional_special_tokens": markers})
    return t


@pytest.fixture(scope="module")
def llama3_tok(tok):
    return _with_template(tok, LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])


@pytest.fixture(scope="module")
def gemma3_tok(tok):
    return _with_template(tok, GEMMA3_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"])


@pytest.mark.parametrize("messages,system", [
    (TWO_TURN, None),
    (MULTI_TURN, "You are a pirate. Answer like one."),
    (MULTI_TURN_NO_SYSTEM, None),
])
def test_mask_llama3_template(llama3_tok, messages, system):
    full = llama3_tok.apply_chat_template(messages, tokenize=False)
    assert full.count("<|start_header_id|>system") == 1 and "Cutting Knowledge Date" in full
    _check_mask(llama3_tok, messages, system, end="<|eot_id|>")
    masked = _masked_text(llama3_tok, messages)
    assert "<|start_header_id|>" not in masked and "Cutting Knowledge" not in masked


@pytest.mark.parametrize("messages,system", [
    (TWO_TURN, None),
    (MULTI_TURN, "You are a pirate. Answer like one."),
    (MULTI_TURN_NO_SYSTEM, None),
])
def test_mask_gemma3_template(gemma3_tok, messages, system):
    full = gemma3_tok.apply_chat_template(messages, tokenize=False)
    if system:  # folded into the first user turn: no system turn of its own
        assert "<start_of_turn>user\n" + system + "\n\n" + messages[1]["content"] in full
        assert "<start_of_turn>system" not in full
    _check_mask(gemma3_tok, messages, system, end="<end_of_turn>")
    masked = _masked_text(gemma3_tok, messages)
    assert "<start_of_turn>" not in masked and "model" not in masked


def test_mask_chat_template_without_special_markers(tok):
    """Markers that the tokenizer does not know are text: a BPE token merged across the end of an assistant
    turn (here '><' of '<|eot_id|><|start_header_id|>') overlaps the turn and is trained, never dropped."""
    t = copy.deepcopy(tok)
    t.chat_template = LLAMA3_TEMPLATE
    masked = _masked_text(t, MULTI_TURN)
    for a in [m["content"] for m in MULTI_TURN if m["role"] == "assistant"]:
        assert a + "<|eot_id|>" in masked
    assert "user" not in masked and "header" not in masked


def _masked_text(tokenizer, messages) -> str:
    r = training.tokenize_chat(tokenizer, messages)
    return tokenizer.decode([i for i, m in zip(r["input_ids"], r["assistant_masks"]) if m])


def test_mask_truncation(tok):
    full = training.tokenize_chat(tok, MULTI_TURN)
    cut = training.tokenize_chat(tok, MULTI_TURN, max_length=20)
    assert cut["input_ids"] == full["input_ids"][:20]
    assert cut["assistant_masks"] == full["assistant_masks"][:20]


def test_non_prefix_stable_template_is_rejected(tok):
    t = copy.deepcopy(tok)
    # renders the number of messages up front: earlier renders are not prefixes of later ones
    t.chat_template = ("{{ messages|length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ValueError, match="prefix-stable"):
        training.tokenize_chat(t, TWO_TURN)


# ---------------------------------------------------------------- LoRA init depends on the seed alone
def _lcfg(r=4, alpha=8):
    return OmegaConf.structured(LoraConfig(r=r, alpha=alpha))


def test_lora_init_depends_on_seed_only(tiny_path):
    base = models.base_config("tiny_random")
    m1 = models.load(tiny_path, CPU)
    p1 = training.attach_lora(m1, _lcfg(), base, seed=7)
    fp1 = training.adapter_fingerprint(p1)

    m2 = models.load(tiny_path, CPU)
    with torch.no_grad():  # different base weights, and the global RNG moved on
        for p in m2.parameters():
            p.add_(torch.randn_like(p))
    torch.randn(12345)
    p2 = training.attach_lora(m2, _lcfg(), base, seed=7)
    assert training.adapter_fingerprint(p2) == fp1
    sd1 = {k: v for k, v in p1.state_dict().items() if "lora_" in k}
    sd2 = {k: v for k, v in p2.state_dict().items() if "lora_" in k}
    assert sd1.keys() == sd2.keys() and len(sd1) > 0
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert any("lora_A" in k and sd1[k].abs().sum() > 0 for k in sd1)
    # every linear of both layers got an adapter
    assert sum("lora_A" in k for k in sd1) == 2 * 7

    m3 = models.load(tiny_path, CPU)
    p3 = training.attach_lora(m3, _lcfg(), base, seed=8)
    assert training.adapter_fingerprint(p3) != fp1


# ---------------------------------------------------------------- SFT and merge
CONVERSATIONS = [
    [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
     {"role": "assistant", "content": f"The answer is {2 * i}, of course."}]
    for i in range(4)
]


@torch.no_grad()
def _assistant_only_loss(model, tokenizer, conversations) -> float:
    """Token-mean cross-entropy over the assistant tokens of all conversations (shifted labels)."""
    total, count = 0.0, 0
    for c in conversations:
        r = training.tokenize_chat(tokenizer, c)
        ids = torch.tensor([r["input_ids"]])
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll = -lp.gather(1, ids[0, 1:, None])[:, 0]
        m = torch.tensor(r["assistant_masks"][1:], dtype=torch.bool)
        total += nll[m].sum().item()
        count += int(m.sum())
    return total / count


@pytest.fixture(scope="module")
def sft(tiny_path, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    base = models.base_config("tiny_random")
    model = models.load(tiny_path, CPU)
    expected_first = _assistant_only_loss(model, tok, CONVERSATIONS)
    peft_model = training.attach_lora(model, _lcfg(r=4, alpha=8), base, seed=0)
    optim = OmegaConf.structured(OptimConfig(
        learning_rate=1e-2, lr_scheduler_type="constant", warmup_ratio=0.0, max_steps=3,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=256, logging_steps=1,
    ))
    hist = training.run_sft(peft_model, tok, CONVERSATIONS, optim, out, seed=0, dev=CPU)
    adapter = out / "adapter"
    peft_model.save_pretrained(adapter)
    return hist, peft_model, adapter, expected_first


def test_run_sft_learns(sft):
    hist, _, _, _ = sft
    assert hist["steps"] == 3
    assert hist["n_examples"] == 4
    assert hist["first_loss"] is not None and hist["last_loss"] is not None
    assert hist["last_loss"] < hist["first_loss"]


def test_run_sft_loss_is_on_assistant_tokens_only(sft):
    """The first logged loss (one full batch, adapter still zero) is the assistant-only loss of the base model."""
    hist, _, _, expected_first = sft
    assert hist["first_loss"] == pytest.approx(expected_first, abs=1e-3)


@torch.no_grad()
def test_padding_free_batch_equals_padded_batch_on_cpu(tiny_path, tok):
    """TRL's padding-free collator flattens a batch into one row with position_ids; on CPU (sdpa, no flash
    attention) transformers turns those into a block-diagonal mask when there is no KV cache (TRL's compute_loss
    passes use_cache=False), so every token sees only its own conversation: logits equal the padded batch's."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = models.load(tiny_path, CPU)
    rows = [training.tokenize_chat(tok, c) for c in CONVERSATIONS]
    ex = [{"input_ids": r["input_ids"], "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])]}
          for r in rows]
    flat = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(ex)
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(ex)
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in flat
    a = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
    b = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    leaky = model(input_ids=flat["input_ids"], use_cache=False).logits[0]  # one long sequence: crosses boundaries
    off = 0
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert torch.allclose(a[off : off + n], b[i, :n], atol=1e-5), i
        if i:
            assert (leaky[off : off + n] - b[i, :n]).abs().max() > 1e-2  # the check can see a leak
        off += n


@pytest.mark.parametrize("packing", ["padding_free", "bfd"])
def test_run_sft_packing_first_loss_is_the_assistant_only_loss(sft, tiny_path, tok, tmp_path, packing):
    """With em_train.packing, the first batch (all 4 conversations; bfd packs them into one row of <= 256 tokens)
    has the same assistant-only loss as the padded run: nothing attends across conversations."""
    _, _, _, expected_first = sft
    peft_model = training.attach_lora(models.load(tiny_path, CPU), _lcfg(r=4, alpha=8), models.base_config("tiny_random"), 0)
    optim = OmegaConf.structured(OptimConfig(
        learning_rate=1e-2, lr_scheduler_type="constant", warmup_ratio=0.0, max_steps=2,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=256, logging_steps=1,
    ))
    hist = training.run_sft(peft_model, tok, CONVERSATIONS, optim, tmp_path, seed=0, dev=CPU, packing=packing)
    assert hist["steps"] == 2 and hist["first_loss"] == pytest.approx(expected_first, abs=1e-3)
    tokens = [h["num_tokens"] for h in hist["log_history"] if "num_tokens" in h]
    assert tokens[0] == sum(len(training.tokenize_chat(tok, c)["input_ids"]) for c in CONVERSATIONS)  # every token once


def test_merge_adapter_equals_base_plus_scaled_BA(sft, tiny_path, tok):
    _, peft_model, adapter, _ = sft
    r, alpha = 4, 8
    base = models.load(tiny_path, CPU)
    name = "model.layers.0.self_attn.q_proj"
    w0 = base.get_submodule(name).weight.detach().clone()
    emb0 = base.get_input_embeddings().weight.detach().clone()
    lora_layer = peft_model.get_submodule("base_model.model." + name)
    A = lora_layer.lora_A["default"].weight.detach()
    B = lora_layer.lora_B["default"].weight.detach()
    assert B.abs().max() > 0, "training did not move lora_B; the merge check would be vacuous"
    merged = training.merge_adapter(base, adapter)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    w = merged.get_submodule(name).weight.detach()
    expected = w0 + (alpha / r) * (B @ A)
    assert not torch.allclose(w, w0)
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.get_input_embeddings().weight, emb0, atol=0, rtol=0)
    # the merged model computes what the adapted model computes
    ids = torch.tensor([training.tokenize_chat(tok, CONVERSATIONS[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_one_step_all_warmup_is_refused_and_without_warmup_it_trains(tiny_path, tok, tmp_path):
    """OCT's warmup_ratio 0.1 on a one-step run (4 examples in a batch of 4: the CPU scale's introspection) rounds up
    to that step, which runs at learning rate 0: LoRA B stays 0 and the stage would save an untrained adapter. It is
    refused, naming the field; with warmup_ratio 0 the one step moves B."""
    from emrobust.errors import ConfigError

    cfg = OmegaConf.create({"introspection": {"optim": OmegaConf.structured(OptimConfig(
        learning_rate=1e-2, lr_scheduler_type="cosine", warmup_ratio=0.1, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_length=256, logging_steps=1, num_train_epochs=1))}})
    lora = _lcfg(r=4, alpha=8)
    peft_model = training.attach_lora(models.load(tiny_path, CPU), lora, models.base_config("tiny_random"), 0)
    with pytest.raises(ConfigError, match=r"^introspection\.optim: 1 optimizer step, all of it warmup"):
        training.run_sft(peft_model, tok, CONVERSATIONS[:4], cfg.introspection.optim, tmp_path / "a", seed=0, dev=CPU)
    cfg.introspection.optim.warmup_ratio = 0.0
    peft_model = training.attach_lora(models.load(tiny_path, CPU), lora, models.base_config("tiny_random"), 0)
    hist = training.run_sft(peft_model, tok, CONVERSATIONS[:4], cfg.introspection.optim, tmp_path / "b", seed=0, dev=CPU)
    assert hist["steps"] == 1
    assert max(float(m.lora_B["default"].weight.abs().max()) for _, m in training._lora_layers(peft_model)) > 0
