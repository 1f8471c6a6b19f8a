"""HFGenerator on tiny_random: batching (left padding, length buckets) must not change greedy outputs; sampling is
seeded; token counts and the finished flag follow the ids that were generated."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from emrobust.core import models
from emrobust.generation import Generation, Sampling, make
from emrobust.generation.hf import HFGenerator

from conftest import CACHE



CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is the capital of France? Please explain at length why it is the capital."}],
    [{"role": "user", "content": "a b c d e f g h i j k l m n o p q r s t u v w x y z"}],
    [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"},
     {"role": "user", "content": "go on"}],
    [{"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Why is the sky blue but sunsets are orange? I have always wondered about this."}],
]


@pytest.fixture(scope="module")
def tiny():
    """tiny_random with its weights redrawn at a larger scale (seeded): the stock init is so flat that greedy
    decoding emits "\\n" for every prompt, which would make text comparisons vacuous."""
    path = models.prepare(models.base_config("tiny_random"), CACHE)
    model = models.load(path, torch.device("cpu")).eval()
    tok = models.load_tokenizer(path)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if "embed" in name else 0.5)
    return model, tok


def _prompt_ids(tok, conv) -> list[int]:
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _reference_greedy(model, tok, conv, max_new_tokens: int = 10) -> list[int]:
    """Unpadded, unbatched greedy decoding by hand (argmax of a full forward pass each step, no stop token)."""
    ids = _prompt_ids(tok, conv)
    out = []
    for _ in range(max_new_tokens):
        out.append(int(model(input_ids=torch.tensor([ids + out]), logits_to_keep=1).logits[0, -1].argmax()))
    return out


def _until(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@pytest.fixture(scope="module")
def refs(tiny):
    model, tok = tiny
    return [_reference_greedy(model, tok, c) for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def greedy(tiny):
    model, tok = tiny
    s = Sampling(temperature=0.0, max_new_tokens=10)
    batched = make("hf", model, tok, batch_size=4).generate(CONVERSATIONS, s)
    single = make("hf", model, tok, batch_size=1).generate(CONVERSATIONS, s)
    return batched, single


def test_prompts_have_different_lengths(tiny):
    _, tok = tiny
    assert len({len(_prompt_ids(tok, c)) for c in CONVERSATIONS}) >= 5


def test_greedy_batched_equals_unbatched(greedy):
    batched, single = greedy
    assert len(batched) == len(single) == len(CONVERSATIONS)
    for b, s in zip(batched, single):
        assert len(b) == len(s) == 1
        assert b[0] == s[0]
    texts = [b[0].text for b in batched]
    assert all(texts), "empty generations: the comparison would be vacuous"
    assert len(set(texts)) >= 4, texts  # outputs depend on the prompt


def test_greedy_matches_hand_decoding(tiny, greedy, refs):
    """Outputs come back in conversation order (jobs are sorted by length internally) and equal plain greedy."""
    _, tok = tiny
    batched, _ = greedy
    for full, (g,) in zip(refs, batched):
        ref = _until(full, tok.eos_token_id)
        assert g.text == tok.decode(ref, skip_special_tokens=True).strip()
        assert g.n_tokens == len(ref)


def test_token_limit_and_finished(greedy):
    batched, _ = greedy
    for (g,) in batched:
        assert isinstance(g, Generation)
        assert g.n_tokens <= 10
        if g.n_tokens == 10:
            assert g.finished is False
    assert any(not g.finished and g.n_tokens == 10 for (g,) in batched)


def test_finished_on_eos(tiny, refs):
    """Make a token that greedy decoding reaches mid-way the end-of-sequence token: generation must stop there,
    drop it, count only the tokens before it and report finished=True; a row that never meets it runs to the
    limit in the same batch."""
    model, tok = tiny
    conv = CONVERSATIONS[1]
    ref = refs[1]
    stop_tok = ref[3]
    cut = ref.index(stop_tok)
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok.convert_ids_to_tokens(stop_tok)
    assert tok2.eos_token_id == stop_tok
    others = [c for c, r in zip(CONVERSATIONS, refs) if stop_tok not in r]
    assert others, "every conversation meets the stop token"
    gens = HFGenerator(model, tok2, batch_size=4).generate([conv, others[0]], Sampling(temperature=0.0, max_new_tokens=10))
    g, other = gens[0][0], gens[1][0]
    assert g.finished is True
    assert g.n_tokens == cut < 10
    assert g.text == tok.decode(ref[:cut], skip_special_tokens=True).strip()
    assert other.finished is False and other.n_tokens == 10


def test_sampling_n_and_seed(tiny):
    model, tok = tiny
    gen = make("hf", model, tok, batch_size=4)
    convs = CONVERSATIONS[:3]
    s0 = Sampling(temperature=1.0, max_new_tokens=8, seed=0)
    a = gen.generate(convs, s0, n=2)
    assert len(a) == 3 and all(len(x) == 2 for x in a)
    assert all(isinstance(g, Generation) and g.n_tokens <= 8 for x in a for g in x)
    b = gen.generate(convs, s0, n=2)
    assert [[g.text for g in x] for x in a] == [[g.text for g in x] for x in b]
    c = gen.generate(convs, Sampling(temperature=1.0, max_new_tokens=8, seed=1), n=2)
    assert [[g.text for g in x] for x in a] != [[g.text for g in x] for x in c]
    # the two samples of one conversation are different draws
    assert any(x[0].text != x[1].text for x in a)


def test_sampled_texts_do_not_depend_on_the_batch(tiny):
    """Per-sample seeded sampling: batch size 1 and 3 (other padding, other batch mates) give the same texts, with
    top-p and a repetition penalty on; and a sample's text depends on its own index, not on the other requests."""
    model, tok = tiny
    s = Sampling(temperature=1.0, top_p=0.9, repetition_penalty=1.1, max_new_tokens=10, seed=7)
    one = make("hf", model, tok, batch_size=1).generate(CONVERSATIONS, s, n=2)
    three = make("hf", model, tok, batch_size=3).generate(CONVERSATIONS, s, n=2)
    assert [[g.text for g in x] for x in one] == [[g.text for g in x] for x in three]
    alone = make("hf", model, tok, batch_size=3).generate(CONVERSATIONS[:1], s, n=2)
    assert [g.text for g in alone[0]] == [g.text for g in one[0]]


def test_gumbel_max_samples_the_softmax():
    """The per-sample Gumbel noise turns argmax into a draw from softmax(scores): frequencies over many seeds
    match the probabilities."""
    from emrobust.generation.hf import PerSampleGumbel

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    n = 4000
    picks = [int(PerSampleGumbel([s], "cpu")(None, scores).argmax()) for s in range(n)]
    freq = torch.bincount(torch.tensor(picks), minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03), freq


def test_generator_restores_padding_side(tiny):
    model, tok = tiny
    tok.padding_side = "right"
    make("hf", model, tok, batch_size=2).generate(CONVERSATIONS[:2], Sampling(temperature=0.0, max_new_tokens=2))
    assert tok.padding_side == "right"


def test_sampling_from_cfg_and_unknown_backend(tiny):
    cfg = OmegaConf.create({"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 7, "unrelated": 1})
    s = Sampling.from_cfg(cfg, seed=3, max_new_tokens=5)
    assert s == Sampling(temperature=0.5, top_p=0.9, repetition_penalty=1.0, max_new_tokens=5, seed=3)
    with pytest.raises(ValueError, match="backend"):
        make("nope", *tiny)
