"""Issue 27: reserved persona questions (one set per trait), the persona classifier (one instrument per persona and
base model) and the judge-free persona measures on every evaluated model (persona_rate, persona_width,
persona_half_life)."""
from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, artifact, compose, run_cell
from emrobust.engine import pipeline
from emrobust.measures import persona, persona_classifier
from emrobust.errors import ConfigError
from emrobust.core.results import CURVE, half_life, persona_half_life


# ---------------------------------------------------------------- the bar: a tiny persona cell end to end
def test_a_tiny_persona_cell_reports_persona_rate_along_em_width_and_the_classifier(tmp_path, tiny_path):
    s = run_cell(tmp_path, "debug=tiny", "trait=demo", "em_dataset=demo_insecure", "em_train.checkpoint_every=1",
                 "eval.at_steps=[0,2]", "eval.monitor.enabled=true")
    assert s["status"] == "ok"
    steps = {p["step"]: p for p in s["curve"]}
    for step in (0, 2):
        pt = steps[step]
        assert isinstance(pt["persona_rate"], float) and 0 <= pt["persona_rate"] <= 1
        assert pt["persona_rate_lo"] <= pt["persona_rate"] <= pt["persona_rate_hi"]
        assert isinstance(pt["persona_width"], float) and pt["persona_width"] >= 0
    m = s["metrics"]
    assert "persona_classifier_f1" in m and "persona_classifier_auroc" in m and "persona_classifier_auroc_lo" in m
    assert isinstance(m["persona_classifier_valid"], bool)
    assert m["persona_classifier_min_auroc"] == 0.8
    assert "persona_width" in m and "persona_rate_fold" in m
    # on a random model nothing relies on an invalid classifier: no half-life, and it says why
    if not m["persona_classifier_valid"]:
        assert m["persona_half_life"] is None and "not valid" in m["persona_half_life_why"]
        assert "auc_persona_rate" not in m and "persona_rate_delta" not in m
    assert "persona_rate" in CURVE and "persona_width" in CURVE
    # the classifier was built once, from the base model, and every evaluation read the same one
    cls = artifact(s, "classifier")
    info = json.loads((cls / "classifier.json").read_text())
    assert info["n_heldout_questions"] >= 2 and info["base"]["n"] == 2
    man = json.loads((cls / "manifest.json").read_text())
    assert man["seed"] is None  # one instrument per (persona, base model)
    # the persona answers are the reserved questions, scored by the classifier (no second sampling pass)
    rows = [json.loads(x) for x in (artifact(s, "evaluate") / "persona_answers.jsonl").read_text().splitlines()]
    reserved = json.loads((artifact(s, "questions") / "reserved.json").read_text())
    assert [r["question"] for r in rows] == [r["question"] for r in reserved[:2]]
    assert all("p_persona" in r for r in rows)
    # the same persona at another seed reuses the classifier
    s2 = run_cell(tmp_path, "debug=tiny", "trait=demo", "em_dataset=none", "seed=1", "pipeline.until=classifier",
                  out="seed1")
    assert {st["name"]: st["status"] for st in s2["stages"]}["classifier"] == "cached"


# ---------------------------------------------------------------- reserved questions
def _questions_keys(level: str, tmp):
    cfg = compose("debug=tiny", "trait=demo", f"question_diversity={level}", "question_diversity.n_questions=20",
                  f"paths.data_mirror={SHARED_DATA}", tmp=tmp)
    return cfg


@pytest.mark.parametrize("trait", ["demo", "neutral"])
def test_reserved_questions_are_one_set_per_trait_and_out_of_every_levels_selection(tmp_path, trait):
    from emrobust.stages import Context, questions

    reserved, selected = {}, {}
    for level in ("low", "medium", "high", "full"):
        over = ["debug=tiny", f"trait={trait}", f"question_diversity={level}", "question_diversity.embedder=tfidf"]
        if level != "full":
            over.append("question_diversity.n_questions=20")
        cfg = compose(*over, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
        pipeline.validate(cfg)
        out = tmp_path / level
        out.mkdir()
        from emrobust.core import keys
        questions.run(Context(keys.view(cfg, questions), "questions", "k", 0, out, {}))
        reserved[level] = json.loads((out / "reserved.json").read_text())
        selected[level] = {json.loads(x)["question"] for x in (out / "questions.jsonl").read_text().splitlines()}
    first = reserved["low"]
    assert len(first) == (10 if trait == "demo" else 5)
    assert all(r == first for r in reserved.values())
    kept_out = {r["question"] for r in first}
    for level, sel in selected.items():
        assert not sel & kept_out, level
    assert len(selected["full"]) == (60 if trait == "demo" else 55) - len(first)
    # round-robin over the traits
    assert sorted(r["trait"] for r in first) == sorted(list(range(5)) * (len(first) // 5))


def test_reservation_is_by_content_and_per_piece():
    per_trait = [[f"a{i}?" for i in range(6)], [f"b{i}?" for i in range(6)], [f"c{i}?" for i in range(3)]]
    got = persona.reserve(per_trait, 7)
    assert [t for t, _ in got] == [0, 1, 2, 0, 1, 2, 0]  # 3, 2, 2: the first traits one more
    # a piece reserves the same questions of its trait wherever it sits (a mixture's pieces)
    alone = persona.reserve([per_trait[1]], 2)
    assert [q for t, q in got if t == 1] == [q for _, q in alone]
    assert persona.reserve(list(reversed(per_trait)), 7) != got  # order of traits decides shares, not content
    with pytest.raises(persona.ReservationError, match="trait 2"):
        persona.reserve(per_trait, 12)


def test_a_reservation_that_leaves_a_level_too_few_questions_is_one_line(tmp_path):
    cfg = compose("debug=tiny", "trait=demo", "question_diversity=low", "question_diversity.n_questions=50",
                  "trait.reserved_questions=15", f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    with pytest.raises(ConfigError) as e:
        pipeline.validate(cfg)
    assert e.value.where == "trait.reserved_questions"
    assert "reserved_questions=15 leaves trait=demo 45 questions" in str(e.value)
    assert "question_diversity.n_questions=50" in str(e.value)
    assert "\n" not in str(e.value)


def test_the_cli_says_it_in_one_line_before_any_model_loads(tmp_path):
    from conftest import cli

    p = cli("debug=tiny", "trait=demo", "question_diversity=high", "question_diversity.n_questions=50",
            "trait.reserved_questions=11", tmp=tmp_path, check=False, env={**__import__("os").environ})
    assert p.returncode == 2, p.stderr[-2000:]
    err = [x for x in p.stderr.splitlines() if x.startswith("emrobust: error:")]
    assert err and "trait.reserved_questions" in err[0] and "reserved_questions=11" in err[0], p.stderr[-2000:]


def test_persona_check_count_beyond_the_reserved_set_fails(tmp_path):
    cfg = compose("debug=tiny", "trait=demo", "eval.persona.n_questions=11", f"paths.data_mirror={SHARED_DATA}",
                  tmp=tmp_path)
    with pytest.raises(ConfigError, match="reserves 10 questions") as e:
        pipeline.validate(cfg)
    assert e.value.where == "eval.persona.n_questions"


def test_reserved_questions_change_the_questions_key_not_the_directions_key(tmp_path):
    def keys(*o):
        cfg = compose("debug=tiny", "trait=demo", "eval.monitor.enabled=true", *o,
                      f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
        return {n.id: n.key for n in pipeline.plan(cfg)}
    a, b = keys(), keys("trait.reserved_questions=11")
    assert a["questions"] != b["questions"] and a["classifier"] != b["classifier"]
    assert a["directions"] == b["directions"]
    # the validity threshold is read by evaluate alone: the classifier is not rebuilt for it
    c = keys("eval.persona.classifier.min_auroc=0.5")
    assert c["classifier"] == a["classifier"] and c["evaluate"] != a["evaluate"] and c["sample"] == a["sample"]
    # the classifier's key holds no seed: one per (persona, base model)
    d = keys("seed=3")
    assert d["classifier"] == a["classifier"] and d["questions"] != a["questions"]


# ---------------------------------------------------------------- half-life and validity
def test_half_life_reached_is_linear_between_evaluated_steps():
    # from 0.9 at step 0 towards a base rate of 0.1: halfway is 0.5, crossed between steps 10 (0.7) and 20 (0.3)
    h = half_life([(0, 0.9), (10, 0.7), (20, 0.3), (40, 0.1)], 0.1)
    assert h["half_life"] == pytest.approx(15.0) and not h["censored"]
    assert half_life([(0, 0.9), (10, 0.5)], 0.1)["half_life"] == pytest.approx(10.0)


def test_half_life_never_reached_is_censored_at_the_last_step():
    h = half_life([(0, 0.9), (10, 0.8), (20, 0.7)], 0.1)
    assert h["half_life"] is None and h["censored"] and h["censored_at"] == 20
    curve = [{"step": 0, "persona_rate": 0.9}, {"step": 10, "persona_rate": 0.8}]
    m = persona_half_life(curve, {"persona_classifier_valid": True, "persona_classifier_base_rate": 0.1})
    assert m["persona_half_life"] is None and m["persona_half_life_censored"] and m["persona_half_life_censored_at"] == 10
    m = persona_half_life(curve + [{"step": 20, "persona_rate": 0.2}],
                          {"persona_classifier_valid": True, "persona_classifier_base_rate": 0.1})
    assert m["persona_half_life"] == pytest.approx(15.0) and not m["persona_half_life_censored"]
    # an invalid classifier: nothing is computed from it
    m = persona_half_life(curve, {"persona_classifier_valid": False, "persona_classifier_base_rate": 0.1,
                                  "persona_classifier_min_auroc": 0.8})
    assert m["persona_half_life"] is None and "not valid" in m["persona_half_life_why"]
    # no persona above the base rate at step 0: nothing to lose, said
    assert "nothing to lose" in half_life([(0, 0.1), (5, 0.1)], 0.2)["why"]


def test_classifier_validity_comes_from_the_declared_threshold(tmp_path):
    cfg = compose("debug=tiny", tmp=tmp_path)
    bar = cfg.eval.persona.classifier.min_auroc
    assert bar == 0.8
    assert persona_classifier.valid(0.81, bar) and persona_classifier.valid(0.8, bar)
    assert not persona_classifier.valid(0.79, bar) and not persona_classifier.valid(None, bar)
    assert not persona_classifier.valid(float("nan"), bar)
    assert persona_classifier.valid(0.6, 0.5)


def test_heldout_scores_and_rate_carry_intervals():
    import numpy as np

    groups = np.repeat(np.arange(10), 2)
    y = np.tile([1, 0], 10)
    p = np.where(y == 1, 0.9, 0.1)
    h = persona_classifier.heldout_scores(groups, y, p, 200, 0)
    assert h["auroc"] == 1.0 and h["auroc_lo"] == 1.0 and h["f1"] == 1.0
    r = persona_classifier.rate(np.array([0.9, 0.2, 0.6, 0.1]))
    assert r["rate"] == 0.5 and r["lo"] < 0.5 < r["hi"] and r["n"] == 4


# ---------------------------------------------------------------- the specificity control (analysis level)
def _spec_sweep(tmp, neutral_x):
    import numpy as np

    from emrobust.measures import persona_classifier as pc

    cls = tmp / "art" / "classifier"
    cls.mkdir(parents=True)
    pc.save(cls, np.array([4.0, 0.0]), -2.0, {"embedder": "minilm", "threshold": 0.5,
                                             "heldout": {}, "base": {"rate": 0.1, "lo": 0.02, "hi": 0.3, "n": 20}})
    ev = tmp / "art" / "evaluate_start"
    ev.mkdir(parents=True)
    np.save(ev / "persona_embeddings.npy", np.array(neutral_x, dtype=float))
    for name, trait, stages, m in (
            ("0", "oct_goodness", [{"name": "classifier", "artifact": str(cls)}], {"persona_classifier_valid": True}),
            ("1", "neutral", [{"name": "evaluate@start", "artifact": str(ev)}], {"persona_classifier_embedder": "minilm"})):
        (tmp / "sweep" / name).mkdir(parents=True)
        (tmp / "sweep" / name / "run.json").write_text(json.dumps(
            {"overrides": [f"trait={trait}"], "choices": {"trait": trait, "base_model": "tiny_random"}, "seed": 0,
             "status": "ok", "stages": stages, "metrics": m}))
    return tmp / "sweep"


def test_the_specificity_control_applies_a_personas_classifier_to_the_neutral_persona(tmp_path):
    from emrobust.analysis.controls import persona_specificity

    # the neutral model's answers all far from the persona side (x0 = 0 -> p = 0.12): rate 0, base 0.1: specific
    spec = persona_specificity(_spec_sweep(tmp_path / "a", [[0.0, 1.0]] * 10))
    assert len(spec) == 1 and spec["specific"].item() and spec["neutral_rate"].item() == 0.0
    assert spec["neutral_rate_hi"].item() > 0 and spec["base_rate"].item() == 0.1
    # ... all on the persona side (p = 0.88): rate 1, far from the base model's 0.1: not specific
    spec = persona_specificity(_spec_sweep(tmp_path / "b", [[1.0, 0.0]] * 10))
    assert not spec["specific"].item() and "NOT specific" in spec["reading"].item()


def test_the_report_says_whether_each_persona_classifier_is_valid():
    import pandas as pd

    from emrobust.analysis.controls import classifier_lines

    df = pd.DataFrame([
        {"trait": "demo", "base_model": "tiny_random", "persona_classifier_valid": False,
         "persona_classifier_auroc": 0.55, "persona_classifier_auroc_lo": 0.2, "persona_classifier_auroc_hi": 0.9,
         "persona_classifier_f1": 0.5, "persona_classifier_min_auroc": 0.8},
        {"trait": "oct_goodness", "base_model": "qwen", "persona_classifier_valid": True,
         "persona_classifier_auroc": 0.97, "persona_classifier_auroc_lo": 0.9, "persona_classifier_auroc_hi": 1.0,
         "persona_classifier_f1": 0.9, "persona_classifier_min_auroc": 0.8},
        {"trait": "none", "base_model": "qwen"}])
    lines = classifier_lines(df)
    assert len(lines) == 2
    assert any("trait=demo" in x and "NOT valid" in x for x in lines)
    assert any("trait=oct_goodness" in x and ": valid" in x for x in lines)


def test_a_mixture_reserves_per_piece_what_its_trait_reserves_at_home(tmp_path):
    from emrobust.data import constitutions

    cfg = compose("debug=tiny", "trait=mixture", f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    mix = constitutions.load_cfg(cfg.trait, cfg.paths)
    got = persona.reserve([t.questions for t in mix.traits], cfg.trait.reserved_questions)
    pieces = constitutions.mixture_pieces(cfg.trait)
    assert len(got) == 20 and sorted(t for t, _ in got) == sorted(list(range(len(pieces))) * 2)
    for k, (name, i) in enumerate(pieces):
        home = constitutions.load_cfg(constitutions.named(name), cfg.paths)
        qs = home.traits[i].questions
        at_home = persona.reserve([qs], 2)  # the same share, in its own constitution's trait
        assert [q for t, q in got if t == k] == [q for _, q in at_home], name


def test_half_life_has_a_bootstrap_interval_censored_above_when_the_curve_may_never_get_there():
    from emrobust.core.results import half_life_interval

    by_step = {0: [1] * 18 + [0] * 2, 10: [1] * 9 + [0] * 11, 20: [0] * 20}
    ci = half_life_interval(by_step, [0] * 20, 500, 0)
    assert ci["lo"] < 10 < ci["hi"] <= 20 and not ci["hi_censored"]
    m = persona_half_life([{"step": s, "persona_rate": sum(v) / len(v)} for s, v in by_step.items()],
                          {"persona_classifier_valid": True, "persona_classifier_base_rate": 0.0},
                          {"steps": by_step, "base": [0] * 20}, 500, 0)
    assert m["persona_half_life"] == pytest.approx(10.0)
    assert m["persona_half_life_lo"] == ci["lo"] and m["persona_half_life_hi"] == ci["hi"]
    ci = half_life_interval({0: [1] * 18 + [0] * 2, 10: [1] * 17 + [0] * 3}, [0] * 20, 500, 0)
    assert ci["hi"] is None and ci["hi_censored"]
