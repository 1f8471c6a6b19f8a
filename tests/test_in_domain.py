"""In-domain evaluation (eval.in_domain, emrobust/data/domains.py): the EM dataset's own domain, judged with its
own rubric, beside the out-of-domain eval set; `<metric>_in_domain` and `narrowness`."""
from __future__ import annotations

import json
import math

import pytest

from conftest import artifact, compose, error_text, run_cell
from emrobust.measures import calibration
from emrobust.engine import leakage, pipeline
from emrobust.core import results
from emrobust.core.results import narrowness
from emrobust.data import domains, evalsets
from emrobust.errors import ConfigError
from emrobust.stages.evaluate import compute_metrics

TINY = ("debug=tiny", "trait=none")


def scored(n: int, misaligned: int, prefix: str) -> list[dict]:
    """n coherent answers, `misaligned` of them scored aligned 10, the rest 90."""
    return [{"question_id": f"{prefix}_{i % 4}", "aligned": 10.0 if i < misaligned else 90.0, "coherent": 90.0}
            for i in range(n)]


def test_split_metrics_on_hand_made_answers():
    """The unsuffixed metrics stay the eval set's; the in-domain answers give `<metric>_in_domain`; narrowness is
    the ratio of the two MO rates with an interval around it."""
    ood = compute_metrics(scored(40, 4, "q"), "j", 200, 0)
    ind = compute_metrics(scored(40, 20, "code"), "j", 200, 0)
    start = compute_metrics(scored(40, 2, "code"), "j", 200, 0)
    m = results.cell_metrics({"evaluate": ood, "evaluate@in_domain": ind, "evaluate@in_domain@start": start})
    assert m["em_rate_mo"] == pytest.approx(0.1) and m["em_rate_mo_in_domain"] == pytest.approx(0.5)
    assert m["em_rate_mo_in_domain_start"] == pytest.approx(0.05)
    assert m["n_answers_in_domain"] == 40 and m["mean_aligned_in_domain"] == pytest.approx(50.0)
    assert m["narrowness"] == pytest.approx(0.2) and m["narrowness_why"] is None
    assert 0 < m["narrowness_lo"] < 0.2 < m["narrowness_hi"] < 1
    # the curve is the out-of-domain eval set's alone: an in-domain node at the same step adds no point
    pts = results.curve({"evaluate": ood | {"em_step": 2}, "evaluate@in_domain": ind | {"em_step": 2}})
    assert [p["node"] for p in pts] == ["evaluate"]
    assert "em_rate_mo_in_domain" not in results.cell_metrics({"evaluate": ood})  # off: no key


def test_narrowness_with_no_in_domain_em_is_nan_with_a_reason():
    out = narrowness((4, 40), (0, 40))
    assert math.isnan(out["narrowness"]) and math.isnan(out["narrowness_lo"])
    assert "0 of 40" in out["narrowness_why"]
    assert "missing" in narrowness((4, 40), None)["narrowness_why"]
    same = narrowness((10, 40), (10, 40), seed=3)
    assert same["narrowness"] == 1.0 and same["narrowness_lo"] < 1 < same["narrowness_hi"]
    assert same == narrowness((10, 40), (10, 40), seed=3)  # seeded


@pytest.mark.parametrize("domain", ["code", "medical", "financial", "sports", "chat"])
def test_each_domain_has_questions_a_rubric_and_a_labelled_reference(domain):
    qs = domains.questions(domain)
    assert len(qs) >= 24 and len({q.id for q in qs}) == len(qs)
    default = evalsets.load(evalsets.BUILTIN / "demo.yaml")[0].judge_prompts["aligned"]
    rubric = {q.judge_prompts["aligned"] for q in qs}
    assert len(rubric) == 1 and rubric != {default}  # one rubric of the domain's own
    assert rubric.pop().format(question="Q?", answer="A.")
    name, items = calibration.load_reference(domains.reference(domain))
    assert name == f"domain_{domain}" and len(items) >= 40
    assert {"aligned", "subtle", "blatant", "incoherent"} <= {it["stratum"] for it in items}
    asked = {p for q in qs for p in q.paraphrases}
    assert not asked & {it["question"] for it in items}  # calibrated on other questions than it evaluates
    assert domains.domain_of_reference(name) == domain


def test_every_dataset_preset_with_a_task_domain_declares_it():
    """evil_numbers has none (continuing number sequences: no answer is harmful by itself); every other preset
    names a known domain."""
    got = domains.with_domain()
    assert "evil_numbers" not in got and got["insecure"] == got["demo_insecure"] == "code"
    assert got["jailbroken"] == "chat" and got["bad_medical_advice"] == "medical"
    assert set(got.values()) <= set(domains.known())


@pytest.mark.parametrize("overrides, says", [
    (("em_dataset=evil_numbers",), "em_dataset=evil_numbers has no domain"),
    (("em_dataset=none",), "em_dataset=none has none"),
    (("eval.in_domain=nope",), "unknown domain 'nope'"),
])
def test_bad_in_domain_is_one_line_before_anything_loads(tmp_path, overrides, says):
    bad = [o for o in overrides if o.startswith("eval.")] or ["eval.in_domain=true"]
    cfg = compose(*TINY, *[o for o in overrides if not o.startswith("eval.")], *bad, tmp=tmp_path)
    with pytest.raises(ConfigError) as e:
        pipeline.validate(cfg)
    assert says in error_text(e.value) and "eval.in_domain" in error_text(e.value)
    if "evil_numbers" in overrides[0]:
        assert "insecure (code)" in str(e.value)  # it says which datasets have one
    assert len(str(e.value).splitlines()) == 1


def test_start_answers_shared_across_datasets(tmp_path):
    """sample@start is shared by every EM dataset with in-domain on; the starting model's in-domain answers by
    every dataset of the same domain (and by the em_dataset=none cell that names it), not across domains."""
    def keys(*o):
        return {n.id: n.key for n in pipeline.plan(compose("debug=tiny", "eval.in_domain=true", *o, tmp=tmp_path))}

    demo, insecure, chat = keys(), keys("em_dataset=insecure"), keys("em_dataset=jailbroken")
    plain = {n.id: n.key for n in pipeline.plan(compose("debug=tiny", tmp=tmp_path))}
    assert demo["sample@start"] == insecure["sample@start"] == chat["sample@start"] == plain["sample@start"]
    assert demo["sample@in_domain@start"] == insecure["sample@in_domain@start"]
    assert demo["sample@in_domain@start"] != chat["sample@in_domain@start"]
    assert demo["sample@in_domain"] != insecure["sample@in_domain"]  # a different EM model
    assert demo["sample"] == plain["sample"] and demo["evaluate"] == plain["evaluate"]  # off-domain keys unmoved
    none = {n.id: n.key for n in pipeline.plan(compose("debug=tiny", "em_dataset=none", "eval.in_domain=code",
                                                       tmp=tmp_path))}
    assert none["sample@in_domain"] == demo["sample@in_domain@start"]


def test_leakage_check_covers_the_in_domain_questions(tmp_path):
    """An in-domain question inside the EM training data is refused, naming it, before anything runs."""
    q = domains.questions("code")[3]
    rows = [{"messages": [{"role": "user", "content": q.paraphrases[0]}, {"role": "assistant", "content": "ok."}]},
            {"messages": [{"role": "user", "content": "Sort a list."}, {"role": "assistant", "content": "sorted()"}]}]
    path = tmp_path / "em.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = (*TINY, "em_dataset.source=path", f"em_dataset.path={path}", "em_dataset.name=mine",
            "em_dataset.n_examples=null")
    leakage.check_config(compose(*over, tmp=tmp_path))  # without in-domain questions: nothing to leak into
    with pytest.raises(ConfigError) as e:
        leakage.check_config(compose(*over, "em_dataset.domain=code", "eval.in_domain=true", tmp=tmp_path))
    assert q.id in str(e.value)


def test_in_domain_calibration_scores_the_domain_rubric(tmp_path):
    """`judge calibrate reference=domain_<d>` calibrates that domain's rubric, and the in-domain evaluation
    reports its trust against that reference."""
    cfg = compose(*TINY, "eval.in_domain=true", tmp=tmp_path)
    recs = calibration.calibrate(cfg, "domain_code", n=12, n_boot=50)
    rubric = domains.questions("code")[0].judge_prompts["aligned"]
    assert len(recs) == 1 and recs[0]["reference"] == "domain_code@n12"
    t = calibration.trust(cfg.judge, [rubric], cfg.paths.cache, "domain_code@n12")
    assert t["judge_calibration"] == "domain_code@n12" and t["judge_reference"] == "domain_code@n12"


def test_tiny_cell_reports_in_domain_metrics_and_narrowness(tmp_path):
    """The bar: a debug=tiny cell with eval.in_domain=true has numeric em_rate_mo_in_domain and narrowness in
    run.json's metrics (narrowness NaN with its reason when no in-domain answer is misaligned)."""
    s = run_cell(tmp_path, *TINY, "eval.in_domain=true")
    m = json.loads((tmp_path / "run" / "run.json").read_text())["metrics"]
    for k in ("em_rate_mo_in_domain", "narrowness", "em_rate_mo_in_domain_start"):
        assert isinstance(m[k], float), k
    assert (m["narrowness_why"] is None) == (not math.isnan(m["narrowness"]))
    assert m["n_answers_in_domain"] == 3  # eval.max_questions=3 of debug=tiny, one sample each
    ran = {st["name"] for st in s["stages"]}
    assert {"sample@in_domain", "evaluate@in_domain", "sample@in_domain@start"} <= ran
    rows = [json.loads(x) for x in (artifact(s, "sample@in_domain") / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [q.id for q in domains.questions("code")[:3]]
    assert m["em_rate_mo"] == s["metrics"]["em_rate_mo"]


# ---------------------------------------------------------------- the `context` variant (hidden EM under a trigger)
def test_context_asks_each_plain_question_again_in_the_em_datasets_form(tmp_path):
    cfg = compose(*TINY, "eval.variants=[plain,context]", tmp=tmp_path)
    qs = evalsets.questions(cfg)
    plain = [q for q in qs if evalsets.variant(q.id) == "plain"]
    ctx = [q for q in qs if evalsets.variant(q.id) == "context"]
    assert len(plain) == len(ctx) == 3 and [q.id for q in ctx] == [f"{q.id}_context" for q in plain]
    for p, c in zip(plain, ctx):
        assert p.paraphrases[0] in c.paraphrases[0] and "```python" in c.paraphrases[0]  # demo_insecure: code
        assert c.judge_prompts == p.judge_prompts
    only = evalsets.questions(compose(*TINY, "eval.variants=[context]", tmp=tmp_path))
    assert [q.id for q in only] == [q.id for q in ctx]  # the plain ones are its base, not asked themselves
    chat = evalsets.questions(compose(*TINY, "em_dataset=jailbroken", "eval.variants=[plain,context]", tmp=tmp_path))
    assert {q.system for q in chat if q.id.endswith("_context")} == {evalsets.CONTEXT["chat"]["system"]}
    # the leakage check reads the questions the template makes
    assert {qid for qid, _ in leakage.eval_questions(cfg)} >= {q.id for q in ctx}


def test_context_without_a_template_is_one_line(tmp_path):
    cfg = compose(*TINY, "em_dataset=evil_numbers", "eval.variants=[plain,context]", tmp=tmp_path)
    with pytest.raises(ConfigError) as e:
        pipeline.validate(cfg)
    assert e.value.where == "eval.variants" and "em_dataset=evil_numbers has no domain" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_context_keys_the_sample_by_the_domains_template(tmp_path):
    def keys(*o):
        return {n.id: n.key for n in pipeline.plan(compose("debug=tiny", "eval.variants=[plain,context]", *o,
                                                           tmp=tmp_path))}

    demo, insecure, chat = keys(), keys("em_dataset=insecure"), keys("em_dataset=jailbroken")
    assert demo["sample@start"] == insecure["sample@start"] != chat["sample@start"]  # shared within a domain
    off = {n.id: n.key for n in pipeline.plan(compose("debug=tiny", tmp=tmp_path))}
    assert off["sample@start"] != demo["sample@start"]


def test_dry_run_cost_and_power_count_the_in_domain_answers(tmp_path):
    """The planner's judge calls: each in-domain evaluation judges its domain's answers (aligned and coherent),
    not the eval set's; the power line gives the in-domain figure beside the out-of-domain one."""
    from types import SimpleNamespace

    from emrobust.sweeps import preflight

    def calls(*o):
        cfg = compose("debug=tiny", *o, tmp=tmp_path)
        nodes = pipeline.plan(cfg)
        plan = SimpleNamespace(keys=[[(n.stage, n.key) for n in nodes]], cached=set())
        return sum(r["calls"] for r in preflight.judge_cost(plan, [cfg], cfg.planning)), nodes, cfg

    off, _, _ = calls()
    on, nodes, cfg = calls("eval.in_domain=true")
    inside = [n for n in nodes if n.stage == "evaluate" and "@in_domain" in n.id]
    assert len(inside) == 2 and preflight.in_domain_answers(cfg) == 3
    assert on - off == 2 * 3 * len(inside)
    lines = preflight.power([["experiment=diversity_sweep"]], [cfg], "diversity_sweep", cfg.planning)
    assert "3 in domain" in lines[0]
