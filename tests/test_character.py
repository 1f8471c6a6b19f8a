"""Character training details on tiny_random: question expansion (near-duplicate filter, the cached stage),
DPO pair filters, extra general prompts, a DPO run that lowers the DPO loss, and fold = base + dW_dpo + dW_sft
(sequentially merged and as one combined adapter)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_cell as run, artifact, SHARED_DATA, compose
from emrobust.train import expansion, training
from emrobust.core import keys, models
from emrobust.engine import pipeline
from emrobust.measures import persona
from emrobust.config import DistillConfig, ExpansionConfig, LoraConfig, OptimConfig
from emrobust.data import chat, constitutions
from emrobust.data.constitutions import Constitution, Trait
from emrobust.errors import ConfigError
from emrobust.generation import Generation
from emrobust.generation.hf import HFGenerator
from emrobust.stages import distill, questions

CPU = torch.device("cpu")


# ---------------------------------------------------------------- expansion: the filter on hand-made strings
def test_overlap_is_share_of_new_words_found_in_existing():
    assert expansion.overlap("Tell me a joke about cats.", "tell me a joke about DOGS!") == pytest.approx(5 / 6)
    assert expansion.overlap("Explain tides to children.", "Tell me a joke about dogs.") == 0.0
    assert expansion.overlap("Explain tides to a child.", "Tell me a joke about dogs.") == pytest.approx(1 / 5)
    assert expansion.overlap("red blue green yellow", "Red, blue.") == 0.5
    assert expansion.overlap("", "anything") == 1.0  # an empty candidate is never new


def test_too_similar_drops_over_half_overlap_only():
    existing = ["Tell me a joke about dogs.", "What should I cook tonight?"]
    assert expansion.too_similar("tell me a joke about dogs.", existing)  # same words, other case
    assert expansion.too_similar("Tell me a joke about cats.", existing)  # 5/6 shared
    assert expansion.too_similar("What should I cook for my parents tonight?", existing)  # 5/8 shared
    assert not expansion.too_similar("Red blue green yellow.", ["red and blue"])  # exactly 1/2: kept
    assert not expansion.too_similar("Explain how tides work to a seven-year-old.", existing)
    assert not expansion.too_similar("Anything at all?", [])


def test_parse_keeps_well_formed_numbered_messages():
    text = ("6. What would you say to a friend who lies?\n"
            "7) Plan a birthday party for my cat.\n"
            "8. no final punctuation\n"
            "9. \"Quoted start is not a message.\"\n"
            "Some chatter between items.\n"
            "   10.   Describe the sea in winter.  \n"
            "11.Why no space?\n")
    assert expansion.parse(text) == ["What would you say to a friend who lies?", "Plan a birthday party for my cat.",
                                     "Describe the sea in winter."]


class ListWriter:
    """A stand-in LLM that writes fixed numbered lists (the tiny random model cannot write one): the expansion
    logic runs for real on its output, and the prompts it was given are kept for inspection."""

    def __init__(self, answers: list[str]):
        self.answers, self.seen = list(answers), []

    def generate(self, conversations, sampling, n=1):
        self.seen.append(conversations)
        return [[Generation(self.answers.pop(0), 10, True)] for _ in conversations]


def test_expand_tops_up_to_target_dropping_near_duplicates_without_clarification():
    const = Constitution("c", [Trait("I am curious.", ["Why is the sky blue?", "How do magnets work?"])], "yaml")
    writer = ListWriter([
        "3. Why is the sky blue today?\n4. Tell me about volcanoes.\n",  # 3 near-duplicates q1: dropped
        "5. Tell me about volcanoes please.\n6. What do bees do in winter?\n7. Plan a trip to Mars.\n",
    ])
    cfg = OmegaConf.structured(ExpansionConfig(max_rounds=5))
    out, stats = expansion.expand(const, writer, target=4, ecfg=cfg, seed=0)
    assert out.traits[0].questions == ["Why is the sky blue?", "How do magnets work?", "Tell me about volcanoes.",
                                       "What do bees do in winter?"]
    assert stats["rounds"] == 2 and stats["generated"] == 2 and stats["dropped_similar"] == 2
    assert stats["short_traits"] == []
    # the prompt: system line, the instruction, then a prefill listing the trait and its questions, no clarification
    conv = writer.seen[0][0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant"]
    assert "I am curious." in conv[1]["content"] and "Number the messages 1 to 4" in conv[1]["content"]
    assert conv[2]["content"].endswith("1. Why is the sky blue?\n2. How do magnets work?\n")
    assert "Clarification" not in conv[2]["content"]
    # with a clarification it is in the prefill
    const.traits[0].clarification = "Curious, not nosy."
    assert "Clarification: Curious, not nosy." in expansion.prompt(const.traits[0], 4)[1]["content"]
    # the expanded constitution in OCT's few-shot format round-trips through the loader
    rows = expansion.few_shot_rows(const, out)
    assert rows[0]["questions"] == const.traits[0].questions and len(rows[0]["additional_questions"]) == 2


def test_prefill_is_continued_not_closed(tok):
    conv = expansion.prompt(Trait("I am curious.", ["Why is the sky blue?"]), 3)
    text = HFGenerator(None, tok).render(conv)
    # the user turn is closed; the assistant turn holds the prefill and is left open for the model to continue
    assert text.rstrip().endswith("1. Why is the sky blue?")
    assert "<|im_start|>assistant\n" + conv[1]["content"][:30] in text


@pytest.fixture(scope="module")
def tok(tiny_path):
    return models.load_tokenizer(tiny_path)


def test_questions_stage_expands_hand_written_on_tiny_random(tmp_path, tiny_path):
    over = ("debug=tiny", "trait=oct_goodness", "trait.source=oct_hand_written", "trait.expand_to=6",
            "trait.expansion.max_rounds=1", "trait.expansion.sampling.max_new_tokens=8", "pipeline.until=questions")
    s = run(tmp_path, *over)
    art = artifact(s, "questions")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["expansion"]["rounds"] == 1 and manifest["expansion"]["target"] == 6
    assert {"expanded.jsonl", "expansion.json"} <= set(manifest["files"])
    expanded = constitutions.load(art / "expanded.jsonl")
    hand = constitutions.load(SHARED_DATA / "oct" / "hand-written" / "goodness.txt")
    assert len(expanded.traits) == 15
    assert [t.questions[:5] for t in expanded.traits] == [t.questions for t in hand.traits]
    assert all(5 <= len(t.questions) <= 6 for t in expanded.traits)
    # the key holds the generator's weights and the expansion settings; cells that do not expand are unaffected
    cfg = compose(*over, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    k = keys.key_config(questions, cfg)
    assert "expansion" in k["trait"] and "expansion_generator" not in k["content"]
    # the cell's own base model generates: it is upstream of the questions stage
    assert next(n for n in pipeline.graph(cfg) if n.id == "questions").upstream == {"base": "base"}
    cfg2 = compose(*over, "trait.expansion.generator=smollm2_135m", f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    k2 = keys.key_config(questions, cfg2)
    assert k2["content"]["expansion_generator"] == models.base_key(models.base_config("smollm2_135m"))
    assert next(n for n in pipeline.graph(cfg2) if n.id == "questions").upstream == {}
    few = keys.key_config(questions, compose("debug=tiny", "trait=oct_goodness", f"paths.data_mirror={SHARED_DATA}",
                                             tmp=tmp_path))
    assert "expansion" not in few["trait"]
    # a second run is served from the cache
    assert {x["name"]: x["status"] for x in run(tmp_path, *over, out="again")["stages"]}["questions"] == "cached"
    with pytest.raises(ConfigError, match="no base_model preset 'nope'"):
        pipeline.validate(compose(*over, "trait.expansion.generator=nope", f"paths.data_mirror={SHARED_DATA}",
                                  tmp=tmp_path))


# ---------------------------------------------------------------- distillation data
def test_dpo_answers_are_rejected_as_described():
    g = lambda text, finished=True: Generation(text, 5, finished)  # noqa: E731
    answers = [g("Fine answer."), g("Cut off mid", False), g("no final punctuation"), g("   "), g(""), g("Done?"),
               g("Unfinished but punctuated.", False)]
    dcfg = OmegaConf.structured(DistillConfig())
    assert [distill.reject(a, dcfg) for a in answers] == [
        None, "unfinished", "no_final_punctuation", "empty", "empty", None, "unfinished"]
    loose = OmegaConf.structured(DistillConfig(require_finished=False, require_final_punctuation=False))
    assert [distill.reject(a, loose) for a in answers] == [None, None, None, "empty", "empty", None, None]


def test_general_prompts_first_user_turn(tmp_path):
    f = tmp_path / "general.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": " Hi there? "},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "second"}]},
        {"messages": [{"role": "user", "content": "Write a haiku."}]},
        {"messages": [{"role": "user", "content": "Name three rivers."}]},
    ]) + "\n")
    assert chat.read_first_user_turns(f) == ["Hi there?", "Write a haiku.", "Name three rivers."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "ok"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "assistant", "content": "no user"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl \(line 2\): no non-empty user turn"):
        chat.read_first_user_turns(bad)
    with pytest.raises(ConfigError, match="bad.jsonl"):
        pipeline.validate(compose("debug=tiny", f"distill.general_prompts={bad}", tmp=tmp_path))
    # the key holds the prompts, not the file's location
    g2 = tmp_path / "elsewhere.jsonl"
    g2.write_text(f.read_text())
    k1 = keys.key_config(distill, compose("debug=tiny", f"distill.general_prompts={f}", tmp=tmp_path))
    k2 = keys.key_config(distill, compose("debug=tiny", f"distill.general_prompts={g2}", tmp=tmp_path))
    k3 = keys.key_config(distill, compose("debug=tiny", f"distill.general_prompts={f}", "distill.n_general_prompts=2",
                                          tmp=tmp_path))
    assert k1 == k2 and k1 != k3 and "general_prompts" not in k1["distill"]
    # a cell with two extra general prompts trains on 4 selected questions + 2 general prompts
    s = run(tmp_path, "debug=tiny", "question_diversity=medium", f"distill.general_prompts={f}",
            "distill.n_general_prompts=2", "pipeline.until=distill")
    art = artifact(s, "distill")
    pairs = [json.loads(x) for x in (art / "pairs.jsonl").read_text().splitlines()]
    assert [p["prompt"][0]["content"] for p in pairs[-2:]] == ["Hi there?", "Write a haiku."] and len(pairs) == 6
    assert json.loads((art / "manifest.json").read_text())["general_prompts"] == 2


# ---------------------------------------------------------------- DPO
def test_dpo_steps_lower_the_dpo_loss(tiny_path, tok, tmp_path):
    pairs = [{"prompt": [{"role": "user", "content": f"Question {i}: do you agree?"}],
              "chosen": [{"role": "assistant", "content": "Yes, gladly."}],
              "rejected": [{"role": "assistant", "content": "No way, never."}]} for i in range(4)]
    optim = OptimConfig(learning_rate=5e-3, lr_scheduler_type="constant", warmup_ratio=0.0, max_steps=4,
                        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=64)
    dcfg = OmegaConf.structured(DistillConfig(beta=0.1, nll_weight=0.0, optim=optim))
    model = training.attach_lora(models.load(tiny_path, CPU), OmegaConf.structured(LoraConfig(r=4, alpha=8)),
                                 models.base_config("tiny_random"), seed=0)
    hist = training.run_dpo(model, tok, pairs, dcfg, tmp_path, seed=0, dev=CPU)
    assert hist["steps"] == 4
    assert hist["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # the adapter starts at zero: policy = ref
    assert hist["last_loss"] < hist["first_loss"] - 0.01
    assert hist["reward_accuracy_last"] == 1.0


# ---------------------------------------------------------------- fold
@pytest.fixture(scope="module")
def folded(tmp_path_factory, tiny_path):
    """distill -> introspect -> fold (exact) on tiny_random; the SFT adapter uses rsLoRA on layer 1 only (the cases
    PEFT's own "cat" combination gets wrong; PEFT's "linear", fold's default, refuses them: tests/test_fold_oct.py)."""
    tmp = tmp_path_factory.mktemp("fold")
    s = run(tmp, *FOLD_CELL, "pipeline.until=fold")
    return {n: artifact(s, n) for n in ("distill", "introspect", "fold")} | {"tmp": tmp}


FOLD_CELL = ("debug=tiny", "question_diversity=medium", "introspection=full", "fold.combination=exact",
             "introspection.lora.use_rslora=true", "introspection.lora.layers_to_transform=[1]",
             "distill.optim.learning_rate=1e-2", "introspection.optim.learning_rate=1e-2")


def test_introspection_transcripts_end_on_an_assistant_turn(folded):
    from emrobust.config import IntrospectionConfig

    rows = [json.loads(x)["messages"] for x in (folded["introspect"] / "transcripts.jsonl").read_text().splitlines()]
    manifest = json.loads((folded["introspect"] / "manifest.json").read_text())
    n_refl, n_inter = manifest["examples"]["reflection"], manifest["examples"]["interaction"]
    assert n_refl == 2 and n_inter == 1 and len(rows) == 3
    assert all(r[-1]["role"] == "assistant" for r in rows)
    for r in rows[:n_refl]:  # self-reflection: the persona system prompt is not saved
        assert [m["role"] for m in r] == ["user", "assistant"]
    for r in rows[n_refl:]:  # self-interaction: OCT's generic system prompt, 2 assistant turns, ends on one
        assert r[0] == {"role": "system", "content": IntrospectionConfig.interaction_system}
        assert [m["role"] for m in r[1:]] == ["user", "assistant", "user", "assistant"]


def _delta(adapter_dir: Path, module: str) -> torch.Tensor:
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    sd = load_file(adapter_dir / "adapter_model.safetensors")
    a = sd[f"base_model.model.{module}.lora_A.weight"]
    b = sd[f"base_model.model.{module}.lora_B.weight"]
    scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg["use_rslora"] else cfg["r"])
    return scale * (b @ a)


def test_fold_equals_base_plus_both_weighted_deltas(folded, tiny_path, tok):
    module = "model.layers.1.mlp.down_proj"
    w0 = models.load(tiny_path, CPU).get_submodule(module).weight.detach()
    d_dpo = _delta(folded["distill"] / "adapter", module)
    d_sft = _delta(folded["introspect"] / "adapter", module)
    assert d_dpo.abs().max() > 0 and d_sft.abs().max() > 0, "untrained adapter: the check would be vacuous"
    fold = models.load(folded["fold"] / "model", CPU)
    # fold.dpo_weight 1.0, fold.introspection_weight 0.25 (OCT's)
    torch.testing.assert_close(fold.get_submodule(module).weight, w0 + d_dpo + 0.25 * d_sft, atol=1e-5, rtol=0)
    # the combined adapter on the base model is the same model
    manifest = json.loads((folded["fold"] / "manifest.json").read_text())
    assert manifest["combined_adapter"]["rank"] == 4 + 4 and manifest["combined_adapter"]["max_abs_diff_vs_fold"] < 1e-5
    combined = training.merge_adapter(models.load(tiny_path, CPU), folded["fold"] / "combined_adapter")
    for name, p in fold.state_dict().items():
        torch.testing.assert_close(combined.state_dict()[name], p, atol=1e-5, rtol=0)
    # layer 0 has only the DPO update (the SFT adapter touched layer 1 only)
    m0 = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(fold.get_submodule(m0).weight,
                               models.load(tiny_path, CPU).get_submodule(m0).weight + _delta(folded["distill"] / "adapter", m0),
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------- persona check
def test_persona_check_before_and_after_em(folded):
    """The same cell run on to em + evaluate: trait scores of the fold model and of the EM'd model, on
    constitution questions that were not selected for training."""
    s = run(folded["tmp"], *FOLD_CELL, out="full")
    st = {x["name"]: x["status"] for x in s["stages"]}
    assert st["fold"] == "cached" and st["em"] == st["evaluate"] == "executed"
    m = s["metrics"]
    for k in ("persona_trait_score", "persona_trait_score_fold"):
        assert 0 <= m[k] <= 100 and m[k + "_lo"] <= m[k] <= m[k + "_hi"]
    assert m["persona_questions"] == "reserved" and m["persona_n"] == 2
    # the evaluated model's persona answers, and the persona's before EM (its own sample, shared by EM datasets)
    rows = [json.loads(x) for x in (artifact(s, "evaluate") / "persona_answers.jsonl").read_text().splitlines()]
    before = [json.loads(x) for x in (artifact(s, "evaluate@start") / "persona_answers.jsonl").read_text().splitlines()]
    assert len(rows) == len(before) == 2 and {r["model_key"] for r in rows} != {r["model_key"] for r in before}
    assert all(0 <= r["trait_score"] <= 100 for r in rows + before)
    selected = {json.loads(x)["question"] for x in (artifact(s, "questions") / "questions.jsonl").read_text().splitlines()}
    assert not {r["question"] for r in rows} & selected
    assert len({r["trait"] for r in rows}) == 2  # round-robin over traits
    # no persona check on trait=none cells, and its settings stay out of their evaluate key
    from emrobust.stages import sample
    assert "eval.persona" not in keys.key_config(sample, compose("debug=tiny", "trait=none", tmp=folded["tmp"]))


def test_persona_questions_fall_back_to_training_when_all_selected(tmp_path):
    q = tmp_path / "q"
    q.mkdir()
    cfg = compose("debug=tiny", "question_diversity=full", "question_diversity.n_questions=null", tmp=tmp_path)
    const = constitutions.load_cfg(cfg.trait, cfg.paths)
    (q / "constitution.json").write_text(json.dumps({"traits": [t.text for t in const.traits],
                                                     "questions": [t.questions for t in const.traits]}))
    every = persona.all_questions(q)
    (q / "questions.jsonl").write_text("".join(json.dumps({"trait": t, "question": x, "samples": 1}) + "\n"
                                               for t, x in every))
    picked, source = persona.pick(q, 7, seed=0)
    assert source == "training" and len(picked) == 7 and len({t for t, _ in picked}) == 5  # 5 demo traits
    assert persona.pick(q, 7, seed=0) == (picked, source)
