"""defense.interleave.select=perplexity_gap (Interleaving++): benign examples chosen from a pool by the gap between
a misaligned reference's per-token loss and the starting model's; the reference is the cell's own short EM run
(`em@reference`), keyed; the selection is saved."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHARED_DATA, artifact, compose, error_text, run_cell, statuses
from emrobust.train import defenses, training
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.measures import probe
from emrobust.config import OptimConfig
from emrobust.errors import ConfigError

TINY = ("debug=tiny", "trait=none", "em_dataset.heldout_fraction=0.25", "defense=interleave")
GAP = ("defense.interleave.select=perplexity_gap", "defense.interleave.reference_steps=2")


def keys(*overrides, tmp):
    return {n.id: n.key for n in pipeline.plan(compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp))}


def test_pick_keeps_the_largest_gaps_of_a_seeded_pool(tmp_path):
    pool = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(10)]
    planted = {2: 5.0, 7: 4.0, 3: float("nan")}  # NaN: no assistant token within max_length

    def gap(convs):
        return [planted.get(int(c[0]["content"][1:]), 0.1) for c in convs]

    whole = compose(*TINY, *GAP, tmp=tmp_path)  # pool=None: every example is a candidate
    picked, info = defenses.pick_benign(whole, pool, 3, np.random.default_rng(0), gap)
    assert picked == [0, 2, 7] and info["pool"] == 10  # the two planted, then the first of the ties; never NaN
    assert [g["index"] for g in info["gaps"] if g["picked"]] == picked
    part = compose(*TINY, *GAP, "defense.interleave.pool=6", tmp=tmp_path)
    picked, info = defenses.pick_benign(part, pool, 2, np.random.default_rng(0), gap)
    cand = [g["index"] for g in info["gaps"]]
    assert len(set(cand)) == 6 == info["pool"] and set(picked) <= set(cand)
    assert set(picked) >= {i for i in (2, 7) if i in cand}
    rnd = compose(*TINY, tmp=tmp_path)  # random: the draw it always was (same rng use: built artifacts unchanged)
    assert defenses.pick_benign(rnd, pool, 2, np.random.default_rng(0)) == (sorted(
        np.random.default_rng(0).choice(10, size=2, replace=False).tolist()), {})


def test_gap_ranks_what_em_taught_last_on_a_real_tiny_model(tmp_path, tiny_path):
    """A tiny model trained on the misaligned answers of 8 probe items (the reference): among a pool of those 8
    training conversations and 8 others, the 8 with the largest gap (reference loss minus start loss) are the
    others: EM made its own examples more likely, so their gap is lowest."""
    items = probe.load(OmegaConf.create({"path": None, "splits": ["a"]}))[:16]
    conv = lambda it, part: [{"role": "user", "content": it["question"]},  # noqa: E731
                             {"role": "assistant", "content": it[part]}]
    taught, others = [conv(it, "misaligned") for it in items[:8]], [conv(it, "aligned") for it in items[8:]]
    tok = models.load_tokenizer(tiny_path)
    start = models.load(tiny_path, torch.device("cpu"))
    before = training.assistant_losses(start, tok, taught + others, 160)
    ref = models.load(tiny_path, torch.device("cpu"))
    optim = OmegaConf.structured(OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                                             max_steps=8, per_device_train_batch_size=4,
                                             gradient_accumulation_steps=1, max_length=160))
    training.run_sft(ref, tok, taught, optim, tmp_path / "t", 0, torch.device("cpu"))
    after = training.assistant_losses(ref, tok, taught + others, 160)
    cfg = compose(*TINY, *GAP, tmp=tmp_path)
    pool = taught + others
    picked, info = defenses.pick_benign(cfg, pool, 8, np.random.default_rng(0),
                                        lambda convs: [after[pool.index(c)] - before[pool.index(c)] for c in convs])
    assert sorted(picked) == list(range(8, 16)), info["gaps"]
    assert info["gap_mean_picked"] > info["gap_mean_pool"]
    pooled = training.assistant_metrics(start, tok, taught[:1], 160)["loss"]
    assert before[0] == pytest.approx(pooled, rel=1e-4)  # one conversation: its loss is the pooled loss


def test_pool_not_larger_than_the_count_is_one_line_before_any_model_loads(tmp_path):
    # debug=tiny: 8 EM rows, 6 trained (held out 0.25); fraction 0.5 needs 6 benign examples
    cfg = compose(*TINY, *GAP, "defense.interleave.fraction=0.5", "defense.interleave.pool=6",
                  f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    with pytest.raises(ConfigError) as e:
        pipeline.validate(cfg)
    text = error_text(e.value)
    assert "defense.interleave.pool" in text and "pool of 6" in text and "chooses 6" in text
    assert len(str(e.value).splitlines()) == 1


def test_reference_is_its_own_keyed_node_and_random_keys_do_not_move(tmp_path):
    gap, rnd, plain = keys(*TINY, *GAP, tmp=tmp_path), keys(*TINY, tmp=tmp_path), keys(*TINY[:-1], tmp=tmp_path)
    assert "em@reference" in gap and "em@reference" not in rnd
    other = keys(*TINY, *GAP[:1], "defense.interleave.reference_steps=3", tmp=tmp_path)
    assert other["em@reference"] != gap["em@reference"] and other["em"] != gap["em"]  # the reference is in em's key
    assert gap["em"] != rnd["em"] and rnd["em"] != plain["em"]
    # select, pool and reference_steps are left out of a random arm's key: its artifacts stay where they were
    assert keys(*TINY, "defense.interleave.pool=5", "defense.interleave.reference_steps=9", tmp=tmp_path) == rnd


def test_gap_cell_trains_on_the_chosen_examples_and_saves_the_selection(tmp_path, tiny_path):
    s = run_cell(tmp_path, *TINY, *GAP, "pipeline.until=em")
    assert statuses(s)["em@reference"] == "executed"
    em = artifact(s, "em")
    d = json.loads((em / "manifest.json").read_text())["defense"]
    assert d["select"] == "perplexity_gap" and d["pool"] == 48 and d["n_benign"] == 6 == len(d["benign_indices"])
    gaps = [json.loads(x) for x in (em / "interleave_gaps.jsonl").read_text().splitlines()]
    assert len(gaps) == 48 and sorted(g["index"] for g in gaps if g["picked"]) == d["benign_indices"]
    top = sorted((g for g in gaps if g["gap"] == g["gap"]), key=lambda g: -g["gap"])[:6]
    assert sorted(g["index"] for g in top) == d["benign_indices"]
    ref = json.loads((artifact(s, "em@reference") / "manifest.json").read_text())
    assert ref["train"]["steps"] == 2 and ref["defense"]["name"] == "none"
    pool = defenses.benign_rows(compose(*TINY, tmp=tmp_path))
    rows = [json.loads(x) for x in (em / "train.jsonl").read_text().splitlines()]
    assert sorted(pool.index(r["messages"]) for r in rows if r["source"] == "benign") == d["benign_indices"]


def test_the_report_names_the_gap_arm(tmp_path):
    import pandas as pd

    from emrobust.analysis import defenses as table

    assert defenses.cell_control(compose(*TINY, *GAP, tmp=tmp_path)) == {"interleave_select": "perplexity_gap"}
    assert defenses.cell_control(compose(*TINY, tmp=tmp_path)) == {"interleave_select": "random"}
    row = {"defense": "interleave", "trait": "none"}
    assert table.arm(pd.Series(row | {"interleave_select": "perplexity_gap"})) == "interleave_gap"
    assert table.arm(pd.Series(row | {"interleave_select": "random"})) == table.arm(pd.Series(row)) == "interleave"
