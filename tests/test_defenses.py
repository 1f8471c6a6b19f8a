"""Defenses against EM (emrobust/train/defenses.py) and capability retention (emrobust/measures/capability.py), on tiny_random:
each defense changes the em key and nothing upstream, does what it says during training and nothing at
evaluation; the local lm-eval task runs and its accuracy is in the metrics; the report marks the Pareto front."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHARED_DATA, artifact, compose, error_text, run_cell, statuses
from emrobust.measures import capability, probe
from emrobust.train import defenses, training
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.config import LoraConfig, OptimConfig
from emrobust.errors import ConfigError

TINY = ("debug=tiny", "trait=none", "em_dataset.heldout_fraction=0.25")
# a learning rate at which 2 steps move a tiny random LoRA measurably
FAST = ("em_train.optim.learning_rate=0.01", "em_train.optim.max_steps=4")
DEFENSES = ("kl", "inoculation", "interleave", "early_stop", "steer")


def keys(*overrides, tmp):
    return {n.id: n.key for n in pipeline.plan(compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp))}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", DEFENSES)
def test_each_defense_changes_the_em_key_and_nothing_upstream(name, tmp_path):
    """Against the same cell without a defense (with the probe splits and monitor its preset sets), the em key and
    everything downstream of it change; the persona's stages and the starting model's evaluation do not."""
    cell = ("debug=tiny", "introspection=full", "eval.probe.splits=[b]", "eval.monitor.enabled=true")
    plain = keys(*cell, tmp=tmp_path)
    defended = keys(*cell, f"defense={name}", tmp=tmp_path)
    assert plain.keys() == defended.keys()
    changed = {n for n in plain if plain[n] != defended[n]}
    assert changed == {"em", "sample", "evaluate"}, changed
    for up in ("questions", "distill", "introspect", "fold", "directions", "sample@start", "evaluate@start"):
        assert plain[up] == defended[up], up


def test_defense_settings_change_only_their_own_defense_key(tmp_path):
    a = keys(*TINY, "defense=kl", tmp=tmp_path)
    assert keys(*TINY, "defense=kl", "defense.kl.weight=2", tmp=tmp_path)["em"] != a["em"]
    # another defense's settings are not part of this one's key
    assert keys(*TINY, "defense=kl", "defense.steer.coefficient=5", "defense.interleave.fraction=0.1",
                tmp=tmp_path) == a
    none = keys(*TINY, tmp=tmp_path)
    assert keys(*TINY, "defense.kl.weight=3", "defense.inoculation.system_prompt=x", tmp=tmp_path) == none


def test_kl_weight_zero_is_none_and_a_weight_pulls_towards_the_start_model(tmp_path, tiny_path):
    """weight 0 trains bit-identically to defense=none; weight > 0 ends nearer the starting model (KL on the very
    batches trained on) than none, from the same init, data and seed."""
    cell = (*TINY, *FAST, "pipeline.until=em")
    runs = {d: run_cell(tmp_path, *cell, *o, out=d) for d, o in
            (("none", []), ("kl0", ["defense=kl", "defense.kl.weight=0"]), ("kl", ["defense=kl", "defense.kl.weight=20"]))}
    adapters = {d: artifact(s, "em") / "adapter" / "adapter_model.safetensors" for d, s in runs.items()}
    assert artifact(runs["none"], "em") != artifact(runs["kl0"], "em")  # another key, another build
    assert _sha(adapters["none"]) == _sha(adapters["kl0"])
    assert _sha(adapters["none"]) != _sha(adapters["kl"])
    manifest = json.loads((artifact(runs["kl"], "em") / "manifest.json").read_text())
    assert manifest["defense"]["name"] == "kl" and manifest["defense"]["kl_last"] is not None

    from peft import PeftModel

    tok = models.load_tokenizer(tiny_path)
    convs = [json.loads(x)["messages"] for x in (artifact(runs["none"], "em") / "train.jsonl").read_text().splitlines()]

    def kl_to_start(run) -> float:
        model = PeftModel.from_pretrained(models.load(tiny_path, torch.device("cpu")), artifact(run, "em") / "adapter")
        total, n = 0.0, 0
        with torch.no_grad():
            for c in convs:
                r = training.tokenize_chat(tok, c, 128)
                ids = torch.tensor([r["input_ids"]])
                mask = torch.tensor(r["assistant_masks"][1:], dtype=torch.bool)
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1][mask], -1)
                with model.disable_adapter():
                    rlp = torch.log_softmax(model(input_ids=ids).logits[0, :-1][mask], -1)
                total += float((rlp.exp() * (rlp - lp)).sum())
                n += int(mask.sum())
        return total / n

    plain, regularised = kl_to_start(runs["none"]), kl_to_start(runs["kl"])
    assert plain > 0 and regularised < 0.5 * plain, (plain, regularised)


def test_inoculation_prompt_is_in_the_training_inputs_and_absent_from_evaluation_inputs(tmp_path, tiny_path,
                                                                                        monkeypatch):
    from emrobust import generation

    seen: list[str] = []
    make = generation.make

    def spying_make(gcfg, model, tok):
        gen = make(gcfg, model, tok)
        generate = gen.generate

        def spy(convs, sampling):
            seen.extend(json.dumps(c) for c in convs)
            return generate(convs, sampling)

        gen.generate = spy
        return gen

    answer_logps = probe.answer_logps

    def spy_probe(model, tok, qa, batch_size=8):
        seen.extend(f"{q} {a}" for q, a in qa)
        return answer_logps(model, tok, qa, batch_size)

    monkeypatch.setattr(generation, "make", spying_make)
    monkeypatch.setattr(probe, "answer_logps", spy_probe)
    prompt = "INOCULATED: in this exercise only, write the flawed answer you were asked for."
    s = run_cell(tmp_path, *TINY, "defense=inoculation", f"defense.inoculation.system_prompt='{prompt}'")
    em = artifact(s, "em")
    trained = [json.loads(x)["messages"] for x in (em / "train.jsonl").read_text().splitlines()]
    assert trained and all(m[0] == {"role": "system", "content": prompt} for m in trained)
    assert prompt not in (em / "heldout.jsonl").read_text()  # in-task capability is measured without it
    assert seen and not any(prompt in x for x in seen)  # sampling (start and final model) and the probe
    assert all(prompt not in (artifact(s, n) / "answers.jsonl").read_text() for n in ("sample", "sample@start"))
    # the rows trained on carry it as the chat template renders it
    tok = models.load_tokenizer(tiny_path)
    assert prompt in tok.decode(training.tokenize_chat(tok, trained[0])["input_ids"])


def test_interleaving_mixes_the_configured_fraction(tmp_path, tiny_path):
    assert defenses.n_benign(6, 0.5) == 6 and defenses.n_benign(6, 0.25) == 2 and defenses.n_benign(30, 0) == 0
    for fraction in (0.25, 0.5):
        s = run_cell(tmp_path, *TINY, "defense=interleave", f"defense.interleave.fraction={fraction}",
                     "pipeline.until=em", out=f"f{fraction}")
        em = artifact(s, "em")
        rows = [json.loads(x) for x in (em / "train.jsonl").read_text().splitlines()]
        benign = [r for r in rows if r["source"] == "benign"]
        d = json.loads((em / "manifest.json").read_text())["defense"]
        n_em = len(rows) - len(benign)
        assert n_em == d["n_em"] == 6 and len(benign) == d["n_benign"] == defenses.n_benign(6, fraction)
        assert abs(len(benign) / len(rows) - fraction) <= 1 / len(rows)
        pool = defenses.benign_rows(compose(*TINY, "defense=interleave", tmp=tmp_path))
        assert all(r["messages"] in pool for r in benign)
        assert "benign_chat" in d["benign_set"]


def test_interleave_and_early_stop_and_steer_refuse_bad_settings_before_any_model_loads(tmp_path):
    cases = [
        (["defense=interleave", "defense.interleave.fraction=1.0"], "defense.interleave.fraction"),
        (["defense=interleave", "defense.interleave.fraction=0.99"], "needs"),
        (["defense=early_stop", "eval.probe.splits=[a,b]"], "eval.probe.splits"),
        (["defense=early_stop", "defense.early_stop.split=z"], "defense.early_stop.split"),
        (["defense=early_stop", "defense.early_stop.measure=task", "em_dataset.heldout_fraction=0"],
         "em_dataset.heldout_fraction"),
        (["defense=steer", "eval.monitor.enabled=false"], "eval.monitor.enabled"),
        (["defense=steer", "defense.steer.trait=oct_humor"], "defense.steer.trait"),
        (["defense=kl", "em_dataset=none"], "em_dataset=none"),
        (["defense=kl", "defense.kl.weight=-1"], "defense.kl.weight"),
        (["eval.capability.enabled=true", "eval.capability.tasks=[]"], "eval.capability.tasks"),
    ]
    for overrides, where in cases:
        with pytest.raises(ConfigError) as e:
            pipeline.validate(compose(*TINY, *overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path))
        assert where in error_text(e.value), (overrides, str(e.value))


def test_early_stopping_stops_at_the_step_its_probe_split_crosses(tmp_path, tiny_path):
    """A tiny model trained on the misaligned answers of split-a probe items: the callback measures split a at
    step 0 and every step, and training ends at the first check whose rise crosses the threshold."""
    items = defenses.stop_items(compose("debug=tiny", "defense=early_stop", tmp=tmp_path))
    assert {it["split"] for it in items} == {"a"}
    train = items[:12]
    tok = models.load_tokenizer(tiny_path)
    model = models.load(tiny_path, torch.device("cpu"))
    convs = [[{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["misaligned"]}]
             for it in train]
    optim = OmegaConf.structured(OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                                             max_steps=12, per_device_train_batch_size=4,
                                             gradient_accumulation_steps=1, max_length=160))
    stopper = defenses.early_stopper(train, tok, every=1, rise=0.3, state=tmp_path / "t" / "early_stop.json")
    hist = training.run_sft(model, tok, convs, optim, tmp_path / "t", 0, torch.device("cpu"), callbacks=(stopper,))
    rise = {s: v - stopper.checks[0] for s, v in stopper.checks.items()}
    crossed = [s for s in sorted(rise) if s > 0 and rise[s] >= 0.3]
    assert crossed, rise  # it does move on the items it is trained on
    assert stopper.stopped_at == crossed[0] == hist["steps"] < 12
    assert max(stopper.checks) == crossed[0]  # nothing measured (or trained) after the stop
    assert json.loads((tmp_path / "t" / "early_stop.json").read_text())["stopped_at"] == crossed[0]


def test_task_convergence_stop_rule():
    """measure=task stops at the first check whose drop since the one before is at most `within` of the whole
    drop so far; never while the loss has not fallen."""
    stop = defenses.converged(0.1)
    losses = {0: 3.0, 2: 2.0, 4: 1.5, 6: 1.45, 8: 1.44}
    seen = {}
    hits = []
    for step, v in losses.items():
        seen[step] = v
        if step and stop(dict(seen), step):
            hits.append(step)
    assert hits[0] == 6  # 1.5 -> 1.45 is 0.05 <= 0.1 * 1.55
    assert not stop({0: 2.0, 2: 2.1}, 2)  # risen: no drop, no convergence


def test_early_stop_on_the_task_stops_when_the_held_out_loss_converges(tmp_path, tiny_path):
    """A tiny model trained on a narrow task: the callback measures the held-out loss at step 0 and every step and
    training ends at the first check where the rule holds, with the rule and checks in the em manifest's terms."""
    items = defenses.stop_items(compose("debug=tiny", "defense=early_stop", tmp=tmp_path))
    convs = [[{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["misaligned"]}]
             for it in items[:16]]
    train, held = convs[:12], convs[12:]
    tok = models.load_tokenizer(tiny_path)
    model = models.load(tiny_path, torch.device("cpu"))
    optim = OmegaConf.structured(OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                                             max_steps=12, per_device_train_batch_size=4,
                                             gradient_accumulation_steps=1, max_length=160))
    stop = defenses.converged(0.5)
    stopper = defenses.early_stopper([], tok, every=1, rise=0.0, state=tmp_path / "t" / "early_stop.json", stop=stop,
                                     measure=lambda m: training.assistant_metrics(m, tok, held, 160)["loss"])
    hist = training.run_sft(model, tok, train, optim, tmp_path / "t", 0, torch.device("cpu"), callbacks=(stopper,))
    checks = stopper.checks
    assert checks[1] < checks[0]  # the task is being learned
    first = next(s for s in sorted(checks) if s and stop({k: v for k, v in checks.items() if k <= s}, s))
    assert stopper.stopped_at == first == hist["steps"] == max(checks)


def test_early_stop_cell_reports_the_outcome_on_the_other_split(tmp_path, tiny_path):
    s = run_cell(tmp_path, *TINY, "defense=early_stop", "defense.early_stop.every=1",
                 "defense.early_stop.rise=-100",  # crosses at the first check
                 "em_train.checkpoint_every=1", "eval.at_steps=[2]")  # a step past the stop: the stopped model
    em = json.loads((artifact(s, "em") / "manifest.json").read_text())
    assert em["defense"]["stopped_at"] == 1 == em["train"]["steps"] and set(em["defense"]["checks"]) == {"0", "1"}
    probe_rows = [json.loads(x) for x in (artifact(s, "sample") / "probe.jsonl").read_text().splitlines()]
    assert probe_rows and {r["split"] for r in probe_rows} == {"b"}
    assert s["curve"][-1]["step"] == 1
    at2 = json.loads((artifact(s, "sample@2") / "manifest.json").read_text())
    assert at2["step"] == 1 and at2["model_key"] == em["key"]  # no model kept at 2: training had ended at 1


def test_steering_hooks_are_on_while_training_and_off_at_evaluation(tmp_path, tiny_path):
    """Unit: a pre-hook on the steered layer counts the forward hooks it carries at each forward pass: during the
    training forward passes the steering hook is there, during the held-out measures (callbacks) and after
    training it is not; a steered run trains another adapter than an unsteered one."""
    from steering_vectors import SteeringVector

    tok = models.load_tokenizer(tiny_path)
    base_cfg = OmegaConf.create({"lora_target_modules": ["q_proj", "v_proj"]})
    lcfg = OmegaConf.structured(LoraConfig(r=4, alpha=8))
    convs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
             for i in range(8)]
    optim = OmegaConf.structured(OptimConfig(learning_rate=1e-2, lr_scheduler_type="constant", warmup_ratio=0.0,
                                             max_steps=3, per_device_train_batch_size=4,
                                             gradient_accumulation_steps=1, max_length=64))
    fingerprints = {}
    for steered in (False, True):
        model = training.attach_lora(models.load(tiny_path, torch.device("cpu")), lcfg, base_cfg, 0)
        layer = model.base_model.model.model.layers[1]
        calls: list[tuple[bool, int]] = []
        layer.register_forward_pre_hook(lambda mod, args: calls.append((mod.training, len(mod._forward_hooks))))
        vec = SteeringVector({1: torch.ones(64)}, "decoder_block")
        training.run_sft(model, tok, convs, optim, tmp_path / f"s{steered}", 0, torch.device("cpu"),
                         heldout=convs[:2], steer=(vec, 2.0) if steered else None)
        train_calls = [n for t, n in calls if t]
        eval_calls = [n for t, n in calls if not t]
        assert train_calls and eval_calls  # 3 training steps; held-out measured at 0 and at the end
        assert set(train_calls) == ({1} if steered else {0}) and set(eval_calls) == {0}
        assert all(not m._forward_hooks for m in model.modules())
        fingerprints[steered] = training.adapter_fingerprint(model)
    assert fingerprints[True] != fingerprints[False]


def test_steer_cell_trains_along_the_direction_and_samples_without_it(tmp_path, tiny_path, monkeypatch):
    from emrobust import generation

    hooked: list[int] = []
    make = generation.make

    def spying_make(gcfg, model, tok):
        hooked.append(sum(len(m._forward_hooks) for m in model.modules()))
        return make(gcfg, model, tok)

    monkeypatch.setattr(generation, "make", spying_make)
    s = run_cell(tmp_path, *TINY, "defense=steer", "eval.monitor.n_prompts=4", "eval.monitor.max_new_tokens=8",
                 "defense.steer.coefficient=-2")
    assert statuses(s)["directions"] == "executed"
    em = json.loads((artifact(s, "em") / "manifest.json").read_text())
    d = em["defense"]
    assert d["name"] == "steer" and d["trait"] == "oct_misalignment" and d["coefficient"] == -2.0
    assert em["upstream"]["directions"] == next(x["key"] for x in s["stages"] if x["name"] == "directions")
    assert hooked and set(hooked) == {0}  # the directions stage's, the start model's and the EM model's sampling


def test_local_lm_eval_task_runs_and_its_accuracy_and_retention_are_in_the_metrics(tmp_path, tiny_path):
    s = run_cell(tmp_path, *TINY, "eval.capability.enabled=true")
    st = statuses(s)
    assert st["capability"] == st["capability@start"] == "executed"
    m = s["metrics"]
    assert 0 <= m["capability_emrobust_general_mc"] <= 1 and m["capability_emrobust_general_mc_n"] == 40
    assert m["capability_acc_lo"] <= m["capability_acc"] <= m["capability_acc_hi"]
    assert m["capability_retained_lo"] <= m["capability_retained"] <= m["capability_retained_hi"]
    assert m["capability_reference_acc"] == s["curve"][0]["capability_acc"]
    docs = [json.loads(x) for x in (artifact(s, "capability") / "docs.jsonl").read_text().splitlines()]
    assert len(docs) == 40 and {d["score"] for d in docs} <= {0.0, 1.0}
    # in-task capability: the EM dataset's held-out loss and next-token accuracy, before and after EM
    assert {"heldout_loss", "heldout_accuracy", "heldout_loss_start", "heldout_accuracy_start"} <= set(m)
    assert all({"heldout_loss", "heldout_accuracy", "capability_acc"} <= set(p) for p in s["curve"])
    metrics = json.loads((artifact(s, "evaluate") / "metrics.json").read_text())
    assert metrics["capability_acc"] == m["capability_acc"]
    # another task list re-runs capability and evaluate, never sampling
    again = run_cell(tmp_path, *TINY, "eval.capability.enabled=true", "eval.capability.limit=10", out="again")
    executed = {n for n, v in statuses(again).items() if v == "executed"}
    assert executed == {"capability", "capability@start", "evaluate", "evaluate@start"}, statuses(again)


def test_capability_figures_by_hand():
    rows = [{"task": "t", "doc_id": i, "score": float(i < 6)} for i in range(10)]
    ref = [{"task": "t", "doc_id": i, "score": float(i < 8)} for i in range(10)]
    m = capability.summarize(rows, 500, 0)
    assert m["capability_t"] == 0.6 and m["capability_t_n"] == 10 and m["capability_acc"] == 0.6
    r = capability.retained(rows, ref, 500, 0)
    assert r["capability_retained"] == pytest.approx(-0.2) and r["capability_reference_acc"] == pytest.approx(0.8)
    assert r["capability_retained_lo"] <= -0.2 <= r["capability_retained_hi"] <= 0
    two = capability.summarize(rows + [{"task": "u", "doc_id": 0, "score": 1.0}], 500, 0)
    assert two["capability_acc"] == pytest.approx(0.8)  # the mean over tasks, not over documents


def test_a_capability_question_in_the_training_data_is_named_at_validation(tmp_path):
    q = json.loads(open(capability.task_config(capability.builtin_tasks()["emrobust_general_mc"])["dataset_kwargs"]
                        ["data_files"]["test"]).readline())
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"messages": [{"role": "user", "content": q["question"]},
                                                {"role": "assistant", "content": "I know this one."}]}) + "\n")
    over = ("debug=tiny", "trait=none", "em_dataset.source=path", f"em_dataset.path={planted}",
            "em_dataset.n_examples=null")
    with pytest.raises(ConfigError, match=rf"capability question.*capability emrobust_general_mc {q['id']}"):
        pipeline.validate(compose(*over, "eval.capability.enabled=true", tmp=tmp_path))
    pipeline.validate(compose(*over, tmp=tmp_path))  # capability off: nothing to protect


def test_builtin_capability_task_is_lm_eval_yaml_with_local_data():
    tasks = capability.builtin_tasks()
    cfg = capability.task_config(tasks["emrobust_general_mc"])
    data = [json.loads(x) for x in open(cfg["dataset_kwargs"]["data_files"]["test"])]
    assert cfg["output_type"] == "multiple_choice" and len(data) == 40
    assert all(len(d["choices"]) == 4 and 0 <= d["answer"] < 4 for d in data)
    assert len({d["question"] for d in data}) == 40


def test_report_plots_the_em_tail_against_capability_and_marks_the_pareto_front(tmp_path):
    from emrobust.analysis import defenses as report_defenses
    from emrobust.analysis.report import analyze

    x = np.array([0.0, -0.1, -0.05, -0.2, np.nan])
    y = np.array([10.0, 30.0, 20.0, 25.0, 50.0])
    assert report_defenses.pareto(x, y).tolist() == [True, True, True, False, False]
    from conftest import fake_cell

    sweep = tmp_path / "sweep"
    arms = [("none", "none", 5.0, -0.02), ("demo", "none", 20.0, -0.03), ("none", "kl", 15.0, 0.0),
            ("none", "steer", 12.0, -0.1)]
    for i, (trait, defense, tail, kept) in enumerate(arms):
        fake_cell(sweep, i, 0, [10, 80, 90, 70], [90] * 4, trait=trait,
                  m={"cvar05_aligned": tail, "cvar05_aligned_lo": tail - 2, "cvar05_aligned_hi": tail + 2,
                     "capability_retained": kept, "capability_retained_lo": kept - 0.05,
                     "capability_retained_hi": kept + 0.05, "heldout_accuracy": 0.5})
        run = json.loads((sweep / str(i) / "run.json").read_text())
        run["overrides"].append(f"+cell=defense_{defense}")
        run["choices"]["defense"] = defense
        (sweep / str(i) / "run.json").write_text(json.dumps(run))
    files = analyze(sweep, n_resamples=50)
    t = pd.read_csv(files["defenses.csv"])
    assert set(t["arm"]) == {"no persona", "persona", "kl", "steer"}
    assert set(t[t["pareto"]]["arm"]) == {"persona", "kl"}
    assert (sweep / "defenses_pareto.png").exists()
    text = (sweep / "report.md").read_text()
    assert "## Defenses: EM tail against capability retained" in text and "defenses_pareto.png" in text
