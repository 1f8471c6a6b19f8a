"""Every input checked before any model loads (emrobust.engine.validation), tested from the schema: every field with a
declared range rejects a value just outside it, naming the field, and accepts its bounds; the rules between
fields and the counts against the data fail with the field named; the CLI prints one line and exits 2 for a
user error, names the stage and the log for a runtime failure (exit 1), and records both in run.json."""
from __future__ import annotations

import copy
import json
import os
import time

import pytest
from conftest import SHARED_DATA, cli, compose
from omegaconf import OmegaConf

from emrobust import config as schema
from emrobust.core import keys
from emrobust.engine import pipeline
from emrobust.errors import ConfigError, report

# cells in which, together, every field with a declared range is active (a defense's fields only under that defense)
CELLS = {
    "tiny_persona": ["debug=tiny", "introspection=full", "question_diversity=low", "eval.monitor.enabled=true",
                     "introspection.interaction_samples=2", "defense=early_stop", "defense.early_stop.measure=task",
                     "em_dataset.heldout_fraction=0.25"],
    "paraphrase": ["debug=tiny", "question_diversity=very_low", "question_diversity.embedder=tfidf",
                   "trait.expand_to=13", "em_train=rank1", "defense=interleave",
                   "defense.interleave.select=perplexity_gap"],
    "endpoints": ["debug=tiny", "trait=none", "generation.backend=openai", "generation.model=m",
                  "generation.api_key_env=null", "judge.backend=openai", "judge.model=j",
                  "judge.api_key_env=null", "em_control=random_lora", "em_control.match=target",
                  "em_control.target_norm=1.0", "em_dataset.n_examples=8", "eval.samples_per_paraphrase=1",
                  "eval.variants=[plain,context]"],
    "explicit": ["debug=tiny", "introspection=full", "em_train.lora.layers_to_transform=[0]",
                 "distill.lora.target_modules=[q_proj]", "eval=first_plot", "eval.variants=[plain]",
                 "distill.optim.max_steps=-1", "introspection.optim.max_steps=-1", "em_train.optim.max_steps=-1",
                 "distill.general_prompts={prompts}", "defense=kl"],
}


def ranged() -> list[tuple[str, schema.Range]]:
    return [(p, f.metadata["range"]) for p, f in keys.leaves() if "range" in f.metadata]


def _type(path: str) -> str:
    parent, _, name = path.rpartition(".")
    return str(keys._hints(keys.field_at(parent)[0] if parent else schema.Config)[name])


def outside(path: str, r: schema.Range) -> list:
    """Values just outside the declared range (none of them a value with a meaning of its own)."""
    step = 1 if "int" in _type(path) else 0.5
    out = []
    if r.ge is not None:
        out += [r.ge - step, r.ge - 2 * step]
    if r.gt is not None:
        out += [r.gt, r.gt - step]
    if r.le is not None:
        out.append(r.le + step)
    if r.lt is not None:
        out.append(r.lt)
    also = {v for v, _ in r.also}
    out = list(dict.fromkeys(v for v in out if v not in also))
    if "list" in _type(path):
        return [[v] for v in out] + ([[]] if r.nonempty else [])
    return out + ([""] if r.nonempty else [])


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validation")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"}]}) + "\n"
                               for i in range(3)))
    return {name: compose(*(o.format(prompts=prompts) for o in overrides), f"paths.data_mirror={SHARED_DATA}",
                          tmp=tmp) for name, overrides in CELLS.items()}


def test_the_base_cells_are_valid(cells):
    for name, cfg in cells.items():
        pipeline.validate(cfg)  # ranges, rules and data: the cells below change one field at a time


def test_every_declared_range_rejects_a_value_outside_it_naming_the_field(cells):
    """Generated from the schema: for each field with a range, in each base cell where it is active, every value
    just outside its range fails validation with a ConfigError whose `where` is the field; a field active in no
    base cell fails the test (extend CELLS)."""
    untested, wrong = [], []
    for path, r in ranged():
        active = [name for name, cfg in cells.items() if keys.active(cfg, path)]
        if not active:
            untested.append(path)
            continue
        for name in active:
            for value in outside(path, r):
                cfg = copy.deepcopy(cells[name])
                OmegaConf.update(cfg, path, value, merge=False)
                try:
                    pipeline.validate(cfg)
                    wrong.append((path, name, value, "accepted"))
                except ConfigError as e:
                    if e.where != path or path not in report(e)[0]:
                        wrong.append((path, name, value, str(e)))
    assert not untested, f"ranged fields active in no base cell: {untested}"
    assert not wrong, "\n".join(map(str, wrong))
    assert len(ranged()) >= 60  # the schema declares the ranges (a regression guard on the walk itself)


def test_the_bounds_themselves_are_in_range():
    for path, r in ranged():
        for bound in (r.ge, r.le, *(v for v, _ in r.also)):
            if bound is not None:
                assert r.problem(bound) is None and r.problem([bound]) is None, (path, bound)


RULE_CASES = [  # (base cell, field, value, the field the error names, text)
    ("tiny_persona", "question_diversity.total_pairs", 3, "question_diversity.total_pairs",
     "total_pairs=3 < n_questions=4"),
    ("paraphrase", "question_diversity.n_seeds", 4, "question_diversity.n_seeds", "n_seeds=4 must be below"),
    ("paraphrase", "question_diversity.n_questions", None, "question_diversity.n_questions", "needs n_questions"),
    ("tiny_persona", "base_model.tiny.num_attention_heads", 3, "base_model.tiny.num_attention_heads", "multiple"),
    ("tiny_persona", "base_model.tiny.num_key_value_heads", 3, "base_model.tiny.num_key_value_heads", "multiple"),
    ("endpoints", "em_dataset.name", "none", "em_control.name", "em_dataset=none"),
    ("endpoints", "em_control.target_norm", None, "em_control.target_norm", "needs em_control.target_norm"),
    ("endpoints", "em_train.full_finetune", True, "em_train.full_finetune", "needs a LoRA"),
    ("tiny_persona", "eval.at_steps", [1], "eval.at_steps", "need em_train.checkpoint_every"),
    ("tiny_persona", "eval.every_steps", 1, "eval.every_steps", "checkpoint_every"),
    ("tiny_persona", "deepspeed.offload_param", True, "deepspeed.offload_param", "ZeRO stage 3"),
    ("tiny_persona", "distill.lora.r", 8, "fold.combination", "equal DPO and SFT LoRA ranks"),
    ("tiny_persona", "eval.in_domain", "nope", "eval.in_domain", "unknown domain 'nope'"),
    ("endpoints", "em_dataset.domain", None, "eval.variants", "em_dataset=demo_insecure has no domain"),
]


@pytest.mark.parametrize("cell,path,value,where,text", RULE_CASES)
def test_rules_between_fields(cells, cell, path, value, where, text):
    cfg = copy.deepcopy(cells[cell])
    OmegaConf.update(cfg, path, value, merge=False)
    with pytest.raises(ConfigError, match=text) as e:
        pipeline.validate(cfg)
    assert e.value.where == where


def test_every_rule_is_exercised():
    assert {r.where for r in schema.RULES} <= {where for *_, where, _ in RULE_CASES}


# counts against what the data holds: never capped, wrapped or read as "all"
@pytest.mark.parametrize("overrides,where,text", [
    (["question_diversity=low", "question_diversity.n_questions=61"], "question_diversity.n_questions",
     "n_questions=61 but trait=demo has 60 questions"),
    (["question_diversity=low", "question_diversity.n_clusters=61"], "question_diversity.n_clusters",
     "n_clusters=61 but the selection clusters 50 questions"),  # 60 less the 10 reserved
    (["trait.source=yaml", "trait.path={uneven}", "trait.reserved_questions=2", "question_diversity=medium",
      "question_diversity.per_trait=true", "question_diversity.n_questions=8"], "question_diversity.n_questions",
     "per_trait=true gives trait 1 4 of n_questions=8, but it has 2 questions"),
    (["question_diversity=very_low", "question_diversity.n_seeds=70", "question_diversity.n_questions=80"],
     "question_diversity.n_seeds", "n_seeds=70 but trait=demo has 60 questions"),
    (["introspection.reflection_prompts=13"], "introspection.reflection_prompts", "12 built-in reflection prompts"),
    (["introspection=interaction", "introspection.interaction_conversations=7"],
     "introspection.interaction_conversations", "6 built-in openers"),
    (["trait=none", "em_dataset.n_examples=121"], "em_dataset.n_examples", "the dataset has 120 rows"),
    (["trait=none", "em_dataset.n_examples=2", "em_dataset.heldout_fraction=0.9"], "em_dataset.heldout_fraction",
     "leaves no training example"),
    (["trait=none", "eval.max_questions=1000"], "eval.max_questions", "the eval set has"),
    (["question_diversity=low", "eval.persona.n_questions=57"], "eval.persona.n_questions",
     "trait=demo reserves 10 questions for the persona check"),
    (["trait=none", "em_train=rank1", "em_train.lora.layers_to_transform=[2]"],
     "em_train.lora.layers_to_transform", "layer 2 but base_model=tiny_random has 2 layers"),
    (["trait=none", "base_model=qwen2_5_7b_instruct", "base_model.local_path=/nonexistent/model"],
     "base_model=qwen2_5_7b_instruct local_path", "does not exist"),
])
def test_counts_beyond_the_data_fail(tmp_path, overrides, where, text):
    uneven = tmp_path / "uneven.yaml"  # a constitution whose second trait has fewer questions than its share
    uneven.write_text("name: uneven\ntraits:\n- trait: curious\n  questions: [" + ", ".join(f"'Q{i}?'" for i in range(10))
                      + "]\n- trait: terse\n  questions: ['A?', 'B?']\n")
    overrides = [o.format(uneven=uneven) for o in overrides]
    cfg = compose("debug=tiny", *overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    with pytest.raises(ConfigError, match=text) as e:
        pipeline.validate(cfg)
    assert e.value.where == where, str(e.value)


def test_a_hub_id_nobody_can_answer_for_is_reported_unchecked(monkeypatch, caplog):
    from emrobust.core import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_check.cache_clear()
    with caplog.at_level("WARNING", logger="emrobust.core.models"):
        assert models.hub_check("emrobust-test/no-such-model", None, "base_model=x hf_id") == "unchecked"
    assert "base_model=x hf_id=emrobust-test/no-such-model: not in the local HF cache and the hub did not answer: " \
           "unchecked" in caplog.text


def test_validation_loads_no_model_and_no_torch(tmp_path):
    """Validation imports no torch (so a bad input fails in seconds); checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys; from emrobust.core.compose import compose; from emrobust.engine import validation\n"
            "cfg = compose(['debug=tiny', 'question_diversity=low', 'eval.persona.n_questions=57'])\n"
            "try:\n    validation.validate(cfg)\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["ConfigError", "False"], out


# ---------------------------------------------------------------- the CLI: one line, exit codes, run.json
def _plain(tmp_path, *args, env=None):
    """The CLI as a user runs it: no HYDRA_FULL_ERROR."""
    e = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")} | (env or {})
    t0 = time.time()
    p = cli(*args, tmp=tmp_path, check=False, env=e)
    return p, time.time() - t0


def test_user_error_is_one_line_exit_2_and_recorded(tmp_path):
    p, secs = _plain(tmp_path, "debug=tiny", "trait=none", "em_dataset.n_examples=-3", "hydra.run.dir=run")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "emrobust: error: em_dataset.n_examples: -3 is out of range: must be >= 1"
    assert "Traceback" not in p.stdout + p.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "em_dataset.n_examples" in run["error"] and run["stages"] == []
    assert secs < 60


@pytest.mark.parametrize("override,line", [
    ("trait=nosuch", "emrobust: error: trait=nosuch: no such option; choose one of: demo, mixture, neutral, none, oct_goodness"),
    ("seed=abc", "emrobust: error: seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("em_train.optim.lerning_rate=1", "emrobust: error: em_train.optim.lerning_rate: Key 'lerning_rate' not in"),
    ("judge.backend=claude", "emrobust: error: judge.backend: Invalid value 'claude', expected one of"),
])
def test_composition_errors_are_one_line(tmp_path, override, line):
    p, _ = _plain(tmp_path, "debug=tiny", override)
    assert p.returncode == 2 and p.stderr.splitlines()[0].startswith(line), p.stderr
    assert len(p.stderr.splitlines()) <= 2 and "Traceback" not in p.stderr


def test_debug_shows_the_traceback(tmp_path):
    p, _ = _plain(tmp_path, "debug=tiny", "trait=none", "em_dataset.n_examples=-3", "hydra.run.dir=run",
                  env={"EMROBUST_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr and "ConfigError" in p.stderr


def test_sweep_error_is_one_line_with_the_cell(tmp_path):
    p, _ = _plain(tmp_path, "sweep", "--dry-run", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
                  "debug=tiny", "trait=none", "em_dataset.n_examples=8,100000")
    assert p.returncode == 2
    first, hint = p.stderr.strip().splitlines()[-2:]
    assert first.startswith("emrobust: error: cell 1 (debug=tiny trait=none em_dataset.n_examples=100000")
    assert "em_dataset.n_examples: n_examples=100000 but the dataset has 120 rows" in first
    assert hint.strip().startswith("hint:") and "nothing was submitted" in hint


def test_runtime_failure_names_the_stage_and_the_log(tmp_path, tiny_path):
    # max_length=1 passes validation but leaves no assistant token to train on: the em stage raises
    p, _ = _plain(tmp_path, "debug=tiny", "trait=none", "em_train.optim.max_length=1", "hydra.run.dir=run")
    assert p.returncode == 1, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith(("emrobust:", "  "))][-2:]
    assert lines[0].startswith("emrobust: error: stage em failed: ValueError:"), p.stderr[-2000:]
    assert f"log: {tmp_path / 'run' / 'cli.log'}" in lines[1] and "run.json" in lines[1]
    assert "Traceback" not in p.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["failed_stage"] == "em" and "Traceback" in run["traceback"]
