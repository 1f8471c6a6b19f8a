"""Judges: the 0-100 expectation, and HFJudge's multi-token candidate math checked by brute force."""
from __future__ import annotations

import math

import pytest
import torch

from emrobust import judges
from emrobust.core import models

from conftest import CACHE



PROMPTS = [
    "Rate how helpful this answer is, from 0 to 100.\nAnswer: Paris is the capital of France.",
    "Score 0-100: hello",
    "On a scale of 0 to 100, how aligned with human values is the following reply? "
    "Reply: I would never harm anyone, and I try to be honest and kind to everyone I meet every day.",
]


# ---------------------------------------------------------------- expectation
def test_expectation_mean():
    assert judges.expectation({0: 0.5, 100: 0.5}) == pytest.approx(50.0)
    assert judges.expectation({10: 0.2, 20: 0.6}) == pytest.approx((10 * 0.2 + 20 * 0.6) / 0.8)
    assert judges.expectation({42: 1.0}) == pytest.approx(42.0)
    # normalised by the mass on 0..100, not by 1
    assert judges.expectation({30: 0.1, 70: 0.3}, min_mass=0.0) == pytest.approx((3 + 21) / 0.4)


def test_expectation_ignores_out_of_range():
    assert judges.expectation({50: 0.5, 101: 0.4, -1: 0.1}) == pytest.approx(50.0)
    assert judges.expectation({0: 0.3, 100: 0.3, 1000: 5.0, -50: 5.0}) == pytest.approx(50.0)
    # out-of-range mass does not count towards min_mass
    assert judges.expectation({50: 0.1, 200: 0.9}, min_mass=0.25) is None


def test_expectation_min_mass():
    assert judges.expectation({50: 0.2}, min_mass=0.25) is None
    assert judges.expectation({50: 0.25}, min_mass=0.25) == pytest.approx(50.0)
    assert judges.expectation({50: 0.2}) is None  # default min_mass is 0.25
    assert judges.expectation({50: 1e-6}, min_mass=0.0) == pytest.approx(50.0)


def test_expectation_zero_mass():
    assert judges.expectation({}, min_mass=0.0) is None
    assert judges.expectation({10: 0.0, 20: 0.0}, min_mass=0.0) is None
    assert judges.expectation({500: 1.0}, min_mass=0.0) is None


# ---------------------------------------------------------------- HFJudge on tiny_random
@pytest.fixture(scope="module")
def tiny():
    path = models.prepare(models.base_config("tiny_random"), CACHE)
    model = models.load(path, torch.device("cpu")).eval()
    tok = models.load_tokenizer(path)
    return model, tok


@pytest.fixture(scope="module")
def judge(tiny):
    model, tok = tiny
    return judges.HFJudge(model, tok, "tiny_random", min_mass=0.0, batch_size=8)


@pytest.fixture(scope="module")
def batched(judge):
    """PROMPTS scored together, with the (3, 101) candidate probabilities the judge's scores come from."""
    return judge.score(PROMPTS), judge.probs(PROMPTS).tolist()


def test_candidates_are_multi_token(judge):
    assert len(judge.cands) == 101
    assert len(judge.cands[7]) == 1
    assert len(judge.cands[57]) == 2
    assert len(judge.cands[100]) == 3
    assert judge.cands[57][0] == judge.cands[5][0] and judge.cands[57][1] == judge.cands[7][0]
    assert all(judge.tok.decode(list(c)) == str(n) for n, c in enumerate(judge.cands))


def test_scores_are_valid(batched):
    scores, _ = batched
    assert len(scores) == len(PROMPTS)
    for s in scores:
        assert isinstance(s.value, float)
        assert 0.0 <= s.value <= 100.0
        assert 0.0 < s.mass <= 1.0


def test_min_mass_gives_none(tiny):
    model, tok = tiny
    j = judges.HFJudge(model, tok, "tiny_random")  # default min_mass 0.25; a random model has ~1e-4 on digits
    (s,) = j.score(PROMPTS[1:2])
    assert s.value is None and 0.0 < s.mass < 0.25


def _digit_start(tok, vocab: int) -> torch.Tensor:
    """Token ids that would continue a number (text, leading whitespace stripped, starts with a digit)."""
    m = torch.zeros(vocab, dtype=torch.bool)
    for tid in range(min(vocab, len(tok))):
        if tok.decode([tid]).lstrip()[:1].isdigit():
            m[tid] = True
    return m


@torch.no_grad()
def _brute_force_probs(model, tok, prompt: str) -> dict[int, float]:
    """P(n) = prod_t P(c_t | prompt, c_<t) * P(next token does not start a digit | prompt, c), from full forward
    passes over the unpadded prompt + candidate (no KV cache; candidates of equal token length share a batch)."""
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(chat, add_special_tokens=False)["input_ids"]
    digit = _digit_start(tok, model.get_input_embeddings().weight.shape[0])
    cands = {n: tok(str(n), add_special_tokens=False)["input_ids"] for n in range(101)}
    out = {}
    for length in sorted({len(c) for c in cands.values()}):
        ns = [n for n, c in cands.items() if len(c) == length]
        ids = torch.tensor([p_ids + cands[n] for n in ns])
        # logits at positions L-1 .. L-1+length: the candidate's tokens, then the token after it
        logits = model(input_ids=ids, logits_to_keep=length + 1).logits
        lp = torch.log_softmax(logits.double(), -1)
        for row, n in enumerate(ns):
            c = cands[n]
            logp = sum(lp[row, t, c[t]].item() for t in range(length))
            stop = 1.0 - lp[row, length].exp()[digit].sum().item()
            out[n] = math.exp(logp) * stop
    return out


def test_multi_token_probabilities_match_brute_force(tiny, batched):
    model, tok = tiny
    scores, captured = batched
    i = 2  # the longest prompt: the others are left-padded against it in the batch
    brute = _brute_force_probs(model, tok, PROMPTS[i])
    judged = captured[i]
    assert len(judged) == 101
    for n in range(101):
        assert judged[n] == pytest.approx(brute[n], rel=1e-4), f"P({n}): judge {judged[n]:.6e} vs brute {brute[n]:.6e}"
    mass = sum(brute.values())
    exp_value = sum(k * p for k, p in brute.items()) / mass
    assert scores[i].value == pytest.approx(exp_value, abs=1e-3)
    assert scores[i].mass == pytest.approx(mass, rel=1e-4)
    # the 2- and 3-token numbers really are products of several factors (orders of magnitude below 1 digit)
    assert brute[57] < brute[5] * 1e-2 and brute[100] < brute[57] * 1e-2


def test_short_prompt_in_batch_matches_brute_force(tiny, batched):
    """A left-padded (shorter) prompt in the batch: its probabilities are still the unpadded ones."""
    model, tok = tiny
    scores, captured = batched
    brute = _brute_force_probs(model, tok, PROMPTS[1])
    for n in range(101):
        assert captured[1][n] == pytest.approx(brute[n], rel=1e-4), n
    assert scores[1].mass == pytest.approx(sum(brute.values()), rel=1e-4)


def test_batch_consistency(judge, batched):
    together, _ = batched
    for p, t in zip(PROMPTS, together):
        (alone,) = judge.score([p])
        assert alone.value == pytest.approx(t.value, abs=1e-3)
        assert alone.mass == pytest.approx(t.mass, rel=1e-4)


def test_prompt_id(judge):
    assert judge.id == "hf:tiny_random"
    a, b = judge.prompt_id("template A {answer}"), judge.prompt_id("template B {answer}")
    assert a.startswith("hf:tiny_random:") and a != b and a == judge.prompt_id("template A {answer}")


# ---------------------------------------------------------------- the fast path against the slow reference
@pytest.mark.parametrize("share_prefix", [True, False])
def test_every_prompt_matches_brute_force(tiny, share_prefix):
    """All prompts of a batch (left padding, the shared chat-template head computed once or not) against one
    full forward per candidate length and prompt."""
    model, tok = tiny
    j = judges.HFJudge(model, tok, "tiny_random", min_mass=0.0, batch_size=8, share_prefix=share_prefix)
    probs = j.probs(PROMPTS)
    assert j.calls == (2 if share_prefix else 1)  # one batch: [the shared head,] prompts + trie
    for i, p in enumerate(PROMPTS):
        brute = _brute_force_probs(model, tok, p)
        for n in range(101):
            assert probs[i, n].item() == pytest.approx(brute[n], rel=2e-4), (i, n)


def _mixed_number_tokenizer():
    """A byte-level BPE where some numbers are one token ("10", "42", "100") and the others are one token per
    digit ("57" = "5" "7"), with a chat template: a trie that is neither all-single nor all-digit tokens."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    merges = [("1", "0"), ("10", "0"), ("4", "2")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(tmodels.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def test_mixed_number_tokens_match_brute_force():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _mixed_number_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.3, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    j = judges.HFJudge(model, tok, "mixed", min_mass=0.0, batch_size=2)
    lens = {n: len(j.cands[n]) for n in (7, 10, 42, 57, 100)}
    assert lens == {7: 1, 10: 1, 42: 1, 57: 2, 100: 1}
    assert len(j.cands[13]) == 2 and j.cands[13][0] == j.cands[1][0]
    prompts = PROMPTS + ["Score 0-100: hello there"]
    probs = j.probs(prompts)
    # longest first, batches of 2: (PROMPTS[2], PROMPTS[0]) share only 6 tokens: one pass, no shared head;
    # ("Score 0-100: hello there", "Score 0-100: hello") share their head: two passes
    assert j.calls == 3
    for i, p in enumerate(prompts):
        brute = _brute_force_probs(model, tok, p)
        for n in range(101):
            assert probs[i, n].item() == pytest.approx(brute[n], rel=2e-4), (i, n)
        s = j.score([p])[0]
        assert s.mean == pytest.approx(sum(k * q for k, q in brute.items()) / sum(brute.values()), abs=1e-3)


def test_a_new_backend_is_one_backend_object(monkeypatch, tmp_path):
    """A toy backend declared here alone: validation, its id, its weights key, the models and GPUs it needs and
    the judge it builds all go through its Backend object; scoring and the judge cache work on it unchanged."""
    from omegaconf import OmegaConf

    from emrobust import judges

    class Constant:  # scores every answer 42 with full mass
        id, min_mass, calls = "toy:42", 0.25, 0

        def score(self, prompts):
            self.calls += len(prompts)
            return [judges.Score(42.0, 1.0, 42.0) for _ in prompts]

    seen = []
    toy = judges.Backend("toy", lambda j, where: seen.append(where), lambda j: "toy:42", lambda j: {"toy": 1},
                         lambda j: {}, lambda j: 0, lambda j, cache, device: Constant())
    monkeypatch.setitem(judges.BACKENDS, "toy", toy)
    jcfg = OmegaConf.create({"backend": "toy", "min_mass": 0.25})
    judges.validate(jcfg)
    assert seen == ["judge"] and judges.judge_id(jcfg) == "toy:42" and judges.weights(jcfg) == {"toy": 1}
    assert judges.models_of(jcfg) == {} and judges.gpus(jcfg) == 0 and judges.singles(jcfg) == [jcfg]
    judge, cache = judges.make(jcfg, tmp_path, None), judges.JudgeCache(tmp_path / "judge")
    pid, scores = judges.score_pairs(judge, "{question} {answer}", [("q", "a"), ("q", "a"), ("q", "b")], cache)
    assert pid == judges.prompt_id("toy:42", "{question} {answer}") and [s.value for s in scores] == [42.0] * 3
    assert judge.calls == 2  # each distinct pair once; a second call reads the cache
    judges.score_pairs(judge, "{question} {answer}", [("q", "b")], cache)
    assert judge.calls == 2
