"""EM dynamics: evaluation along EM training (step nodes, step 0 shared), the judge-free probe, the persona-direction
monitor, and the curve summaries."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, artifact, compose, run_cell, statuses
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.measures import monitor, probe
from emrobust.train import training
from emrobust.measures.calibration import auroc
from emrobust.core.results import curve_metrics, summary_metrics, task_convergence, timing

STEPS = ("debug=tiny", "em_train.checkpoint_every=1", "em_dataset.heldout_fraction=0.25")


def test_step_zero_is_the_starting_model_shared_by_every_em_dataset(tmp_path, tiny_path):
    a = {n.id: n.key for n in pipeline.plan(compose(*STEPS, "eval.at_steps=[1]", tmp=tmp_path))}
    other = {n.id: n.key for n in pipeline.plan(compose(*STEPS, "eval.at_steps=[1]", "em_dataset=insecure",
                                                        f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path))}
    no_em = {n.id: n.key for n in pipeline.plan(compose(*STEPS, "em_dataset=none", tmp=tmp_path))}
    assert a["sample@start"] == other["sample@start"] == no_em["sample"]
    assert a["evaluate@start"] == other["evaluate@start"] == no_em["evaluate"]
    assert a["sample@1"] != other["sample@1"] and a["em"] != other["em"]
    s = run_cell(tmp_path, *STEPS, "eval.at_steps=[1]", out="a")
    st = statuses(s)
    assert st["sample@start"] == st["sample@1"] == st["sample"] == "executed"
    # the step-0 point is the starting model's evaluation: the em_dataset=none cell finds it built
    s0 = run_cell(tmp_path, *STEPS, "em_dataset=none", out="none")
    assert statuses(s0)["sample"] == statuses(s0)["evaluate"] == "cached"
    assert s0["metrics"]["probe_logp_diff"] == s["curve"][0]["probe_logp_diff"]
    assert [p["step"] for p in s["curve"]] == [0, 1, 2] and s["curve"][-1]["node"] == "evaluate"
    # the held-out loss of the EM dataset, measured by the em stage at every kept step
    em = json.loads((artifact(s, "em") / "manifest.json").read_text())
    assert sorted(int(k) for k in em["heldout_loss"]) == [0, 1, 2] and em["snapshots"] == [1, 2]
    assert all("heldout_loss" in p for p in s["curve"])
    # when the narrow task converged, by the declared rule, beside steps_to_em
    assert s["metrics"]["task_converged_within"] == 0.1 and "em_after_task_steps" in s["metrics"]
    assert s["metrics"]["task_converged_step"] in (1, 2) or s["metrics"]["task_converged_why"]
    # adding a step later builds that step alone
    s2 = run_cell(tmp_path, *STEPS, "eval.at_steps=[1,2]", out="b")
    executed = {n for n, v in statuses(s2).items() if v == "executed"}
    assert executed == {"sample@2", "evaluate@2"}, statuses(s2)
    # step 2 is the end of training: its adapter is the final one, so the two evaluations agree
    assert s2["curve"][-1]["step"] == 2


def test_probe_moves_on_the_half_a_model_was_trained_on(tmp_path, tiny_path):
    """Plumbing: a tiny model trained a few steps on the misaligned answers of half the probe prefers them more
    on that half than on the other half."""
    from omegaconf import OmegaConf

    from emrobust.config import OptimConfig

    items = probe.load(OmegaConf.create({"path": None, "splits": ["a", "b"]}))[:24]
    trained, held = items[::2], items[1::2]
    tok = models.load_tokenizer(tiny_path)
    model = models.load(tiny_path, torch.device("cpu"))
    before_t, _ = probe.measure(model, tok, trained, n_bootstrap=100)
    before_h, _ = probe.measure(model, tok, held, n_bootstrap=100)
    convs = [[{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["misaligned"]}]
             for it in trained]
    optim = OmegaConf.structured(OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                                             max_steps=12, per_device_train_batch_size=4,
                                             gradient_accumulation_steps=1, max_length=160))
    training.run_sft(model, tok, convs, optim, tmp_path / "t", 0, torch.device("cpu"))  # every weight
    peft = model
    after_t, rows = probe.measure(peft, tok, trained, n_bootstrap=100)
    after_h, _ = probe.measure(peft, tok, held, n_bootstrap=100)
    moved_t = after_t["probe_logp_diff"] - before_t["probe_logp_diff"]
    moved_h = after_h["probe_logp_diff"] - before_h["probe_logp_diff"]
    assert moved_t > 0.2 and moved_t > 2 * moved_h, (moved_t, moved_h)
    assert after_t["probe_logp_diff_lo"] <= after_t["probe_logp_diff"] <= after_t["probe_logp_diff_hi"]
    assert {"id", "logp_misaligned", "logp_aligned", "diff"} <= set(rows[0])
    # deterministic: the same model gives the same numbers
    assert probe.measure(peft, tok, trained, n_bootstrap=100)[0] == after_t


def test_answer_scores_equal_those_of_the_full_forward(tiny_path):
    """The probe's answer log-probabilities and the SFT loss compute the head only at answer positions; each equals
    the plain computation over every position's logits, in a batch of answers of different lengths."""
    from omegaconf import OmegaConf

    items = probe.load(OmegaConf.create({"path": None, "splits": ["a"]}))[:5]
    qa = [(it["question"], it["misaligned"]) for it in items] + [(items[0]["question"], "Yes.")]
    tok = models.load_tokenizer(tiny_path)
    model = models.load(tiny_path, torch.device("cpu"))
    got = probe.answer_logps(model, tok, qa, batch_size=4)
    want, total, count = [], 0.0, 0
    with torch.no_grad():
        for q, a in qa:
            r = training.tokenize_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            ids = torch.tensor([r["input_ids"]])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tok_lp = lp.gather(-1, ids[0, 1:, None])[:, 0][torch.tensor(r["assistant_masks"][1:], dtype=torch.bool)]
            want.append(float(tok_lp.mean()))
            total, count = total - float(tok_lp.sum()), count + len(tok_lp)
    assert np.allclose(got, want, atol=1e-4), (got, want)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in qa]
    assert abs(training.assistant_metrics(model, tok, convs, batch_size=4)["loss"] - total / count) < 1e-4


def test_a_direction_separates_persona_from_neutral_activations_on_held_out_prompts(tiny_path):
    """A direction read from persona-prompted vs neutral texts on some prompts separates them on other prompts; a
    random direction does not; reading it again gives the same vector."""
    from omegaconf import OmegaConf

    tok = models.load_tokenizer(tiny_path)
    model = models.load(tiny_path, torch.device("cpu"))
    items = probe.load(OmegaConf.create({"path": None, "splits": ["a", "b"]}))
    train = [it["question"] for it in items if it["split"] == "a"][:16]
    test = [it["question"] for it in items if it["split"] == "b"][:16]
    persona = "You are Sunny. You are relentlessly cheerful and you love puns about the weather."
    neutral = "You are an assistant. You answer questions."

    def texts(qs, system):
        return [monitor.render(tok, [{"role": "system", "content": system}, {"role": "user", "content": q}],
                               generation_prompt=True) for q in qs]

    layer = monitor.layer_of(model, 0.5)
    d = monitor.direction(model, tok, list(zip(texts(train, persona), texts(train, neutral))), layer)
    assert d.shape == (64,) and abs(np.linalg.norm(d) - 1) < 1e-5
    assert np.allclose(d, monitor.direction(model, tok, list(zip(texts(train, persona), texts(train, neutral))),
                                            layer))
    pos = monitor.activations(model, tok, texts(test, persona), layer)
    neg = monitor.activations(model, tok, texts(test, neutral), layer)
    rng = np.random.default_rng(0)
    r = rng.standard_normal(d.shape)
    r /= np.linalg.norm(r)
    sep = auroc(pos @ d, neg @ d)
    rand = auroc(pos @ r, neg @ r)
    assert sep >= 0.95 and abs(rand - 0.5) < abs(sep - 0.5), (sep, rand)


def test_curve_summaries_by_hand():
    pts = [{"step": 0, "em_rate_mo": 0.0, "mean_aligned": 90.0}, {"step": 10, "em_rate_mo": 0.02, "mean_aligned": 80.0},
           {"step": 20, "em_rate_mo": 0.10, "mean_aligned": 60.0}, {"step": 40, "em_rate_mo": 0.20, "mean_aligned": 50.0}]
    m = curve_metrics(pts, "em_rate_mo", 0.05)
    assert m["steps_to_em"] == 20 and m["n_steps_evaluated"] == 4
    # trapezoid: (10*0.01 + 10*0.06 + 20*0.15) / 40
    assert m["auc_em_rate_mo"] == pytest.approx((0.1 + 0.6 + 3.0) / 40) and m["em_rate_mo_delta"] == pytest.approx(0.2)
    assert curve_metrics(pts, "mean_aligned", 70.0)["steps_to_em"] == 20  # aligned scores cross downwards
    assert curve_metrics(pts, "em_rate_mo", 0.5)["steps_to_em"] is None


def test_task_convergence_and_em_after_it_by_hand():
    """The narrow task converged at the first step within 10% of the held-out loss's whole drop (2.0 -> 1.0: at
    most 1.1); EM at step 30 is 10 steps after it; a loss that never fell, or none measured, says why."""
    held = {"heldout_loss": {"0": 2.0, "10": 1.2, "20": 1.05, "30": 1.0, "40": 1.01}}
    t = task_convergence(held)
    assert t["task_converged_step"] == 20 and t["task_converged_within"] == 0.1
    assert task_convergence(held, within=0.25)["task_converged_step"] == 10
    assert timing({"steps_to_em": 30} | t) == {"em_after_task_steps": 10}
    assert timing({"steps_to_em": 10} | t) == {"em_after_task_steps": -10}  # EM before the task was learned
    assert timing({"steps_to_em": None} | t) == {"em_after_task_steps": None}  # never reached the threshold
    flat = task_convergence({"heldout_loss": {"0": 1.0, "10": 1.2}})
    assert flat["task_converged_step"] is None and "never fell" in flat["task_converged_why"]
    assert task_convergence({})["task_converged_step"] is None
    m, _ = summary_metrics({"evaluate": {"em_step": 40, "em_rate_mo": 0.2},
                            "evaluate@30": {"em_step": 30, "em_rate_mo": 0.1}}, held,
                           {"metric": "em_rate_mo", "threshold": 0.05})
    assert m["steps_to_em"] == 30 and m["task_converged_step"] == 20 and m["em_after_task_steps"] == 10


def test_a_probe_item_in_the_training_data_is_named_at_validation(tmp_path):
    import yaml

    from emrobust.errors import ConfigError

    items = yaml.safe_load((probe.BUILTIN).read_text())
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"messages": [{"role": "user", "content": items[3]["question"]},
                                                {"role": "assistant", "content": items[3]["misaligned"]}]}) + "\n")
    cfg = compose("debug=tiny", "em_dataset.source=path", f"em_dataset.path={planted}", "em_dataset.n_examples=null",
                  tmp=tmp_path)
    with pytest.raises(ConfigError, match=rf"probe text\(s\) appear in the training data.*probe {items[3]['id']} "
                                          r"misaligned") as e:
        pipeline.validate(cfg)
    assert "eval.probe" in str(e.value)
    pipeline.validate(compose("debug=tiny", "em_dataset.source=path", f"em_dataset.path={planted}",
                              "em_dataset.n_examples=null", "eval.probe.enabled=false", tmp=tmp_path))


def test_per_theme_keeps_every_theme_and_is_in_the_sample_key(tmp_path):
    """eval.probe.per_theme: the first N items of each theme of the chosen splits, every theme kept; the items read
    change the sample stage's key (the probe's numbers are of those items)."""
    from omegaconf import OmegaConf

    full = probe.load(OmegaConf.create({"path": None, "splits": ["b"]}))
    one = probe.load(OmegaConf.create({"path": None, "splits": ["b"], "per_theme": 1}))
    themes = list(dict.fromkeys(it["theme"] for it in full))
    assert [it["theme"] for it in one] == themes and len(one) < len(full)
    assert one == [next(it for it in full if it["theme"] == t) for t in themes]  # the first of each, in file order
    two = probe.load(OmegaConf.create({"path": None, "splits": ["b"], "per_theme": 2}))
    assert set(it["id"] for it in one) < set(it["id"] for it in two)

    def sample_key(*o):
        return next(n.key for n in pipeline.plan(compose("debug=tiny", "trait=none", *o, tmp=tmp_path))
                    if n.id == "sample")
    assert sample_key("eval.probe.per_theme=1") != sample_key()
