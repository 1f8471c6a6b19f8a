"""Stage keys, tested from the schema: every field of the schema (emrobust/config/) is changed in a few base cells
and the keys of every node are compared. An execution-only field, a label or an inactive field changes no key; any
other field changes the key of each node whose stage declares it read (emrobust.core.keys), and of everything
downstream, and nothing upstream. Not a hand-picked list: the fields come from walking the schema."""
from __future__ import annotations

import copy
import enum
import json
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import SHARED_DATA, compose, run_cell, statuses
from emrobust.core import keys
from emrobust.engine import pipeline
from emrobust.config import Config

# values to try, in order, when the generic change of a field is not a valid config in a base cell (a name that
# must exist: a builtin set, a base_model config); fields still unchanged in every base cell fail the coverage test
ALT = {
    "trait.name": ["neutral", "oct_sycophancy"],
    "judge.model": ["smollm2_135m", "tiny_random"],
    "base_model.tokenizer_from": ["qwen2_5_7b_instruct"],
    "trait.expansion.generator": ["smollm2_135m"],
    "question_diversity.paraphrase.generator": ["smollm2_135m"],
    "eval.monitor.traits": [["oct_goodness"]],
    "eval.in_domain": ["code"],
}


def _general_prompts(tmp: Path) -> Path:
    f = tmp / "general.jsonl"
    f.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Tell me about topic {i}."},
                                                  {"role": "assistant", "content": "Sure."}]}) + "\n"
                         for i in range(4)))
    return f


def base_cells(tmp: Path) -> dict[str, list[str]]:
    """Cells chosen so that every conditional field is active in one of them."""
    gp = _general_prompts(tmp)
    return {
        # SmolLM2 (gguf fields), demo trait, reflection, demo_insecure, full-length training, capability (lm-eval),
        # steering along a persona direction (the monitor on)
        "default": ["defense=steer"],
        "tiny_persona": ["debug=tiny", "introspection=full", "question_diversity=low", "eval.monitor.enabled=true",
                         "em_train.checkpoint_every=1", "defense=interleave",
                         "defense.interleave.select=perplexity_gap"],
        "generators": [  # expansion, paraphrases, openai endpoints, random_lora control, a hub model, registry data
            "debug=tiny", "base_model=qwen2_5_7b_instruct", "trait=oct_goodness", "trait.source=oct_hand_written",
            "trait.expand_to=6", "question_diversity=very_low", "question_diversity.embedder=tfidf",
            f"distill.general_prompts={gp}", "em_dataset=insecure", "em_control=random_lora",
            "em_control.match=target", "em_control.target_norm=1.0", "eval=first_plot", "eval.variants=[plain]",
            "generation.backend=openai", "generation.base_url=http://127.0.0.1:1/v1", "generation.model=m",
            "judge=gpt4o_betley", "judge.base_url=http://127.0.0.1:2/v1"],
        "none_full": ["debug=tiny", "trait=none", "em_train=full", "judge=panel",
                      "judge.members=[tiny_random,smollm2_135m,openai_server]", "defense=kl"],
        "inoculation": ["debug=tiny", "trait=none", "defense=inoculation"],
        "early_stop": ["debug=tiny", "trait=none", "defense=early_stop"],
        "early_stop_task": ["debug=tiny", "trait=none", "defense=early_stop", "defense.early_stop.measure=task",
                            "em_dataset.heldout_fraction=0.25"],
    }


def _members(tp):
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return list(arg)
    return None


def candidates(path: str, value, tmp: Path) -> list:
    """Values to set the field at `path` to instead of `value`."""
    return [c for c in _candidates(path, value, tmp) if c != value]


def _candidates(path: str, value, tmp: Path) -> list:
    parent, _, name = path.rpartition(".")
    cls = keys.field_at(parent)[0] if parent else Config
    tp = keys._hints(cls)[name]
    members = _members(tp)
    if path.startswith("paths."):
        return [str(tmp / "elsewhere" / name)]
    if members is not None:
        return [m.value for m in members if m != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value + 0.05]
    if isinstance(value, str):
        return [value + "_x", *ALT.get(path, [])]
    if value is None:
        s = str(tp)
        if "list" in s:
            return [[0]] if "int" in s else [["plain"]] if "Variant" in s else [["q_proj"]]
        if "float" in s:
            return [0.5]
        if "int" in s:
            return [1]
        return ["x", *ALT.get(path, [])]
    if OmegaConf.is_list(value) or isinstance(value, list):
        if list(value)[:-1]:
            return [list(value)[:-1], *ALT.get(path, [])]
        if path.endswith("monitor.traits"):  # a one-item list: another constitution
            return [["oct_goodness"]]
        return [[1] if "int" in str(tp) else ["b"] if path.endswith("splits") else
                ["oct_goodness"] if path.endswith("traits") else ["q_proj"], *ALT.get(path, [])]
    if OmegaConf.is_dict(value) or isinstance(value, dict):
        return [{"some_knob": 1}]
    raise AssertionError(f"no change known for {path}={value!r}")


def node_keys(cfg) -> dict[str, tuple[str, dict[str, str]]]:
    return {n.id: (n.key, n.upstream) for n in pipeline.plan(cfg)}


def downstream(graph: dict[str, tuple[str, dict[str, str]]], roots: set[str]) -> set[str]:
    out, grew = set(roots), True
    while grew:
        grew = False
        for nid, (_, up) in graph.items():
            if nid not in out and set(up.values()) & out:
                out.add(nid)
                grew = True
    return out


def readers(cfg, path: str) -> set[str]:
    """Nodes of `cfg`'s graph whose stage reads `path` (declared, active, keyed)."""
    if path == "seed":
        return {n.id for n in pipeline.graph(cfg) if pipeline.seeded(n.stage, pipeline.stage_module(n.stage))}
    if not keys.keyed(path) or not keys.active(cfg, path):
        return set()
    out = set()
    for n in pipeline.graph(cfg):
        for r in keys.reads(pipeline.stage_module(n.stage)):
            if r.active(cfg) and (path == r.path or path.startswith(r.path + ".")) and \
                    not any(path == f"{r.path}.{e}" or path.startswith(f"{r.path}.{e}.") for e in r.exclude):
                out.add(n.id)
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Every leaf field changed in every base cell: {field: [(cell, changed node ids, expected node ids)]}."""
    tmp = tmp_path_factory.mktemp("keys")
    results: dict[str, list] = {}
    failures: dict[str, list] = {}
    for cell, overrides in base_cells(tmp).items():
        base = compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp)
        before = node_keys(base)
        for path, fld in keys.leaves():
            if keys.kind(fld) == "location":  # the content decides: test_a_location_is_its_content
                continue
            value = OmegaConf.select(base, path)
            last = None
            # each change is made in place and undone (a deep copy of the whole cell per change was a third of
            # this fixture's time); the cell's keys after the last change prove every undo
            undo = copy.deepcopy(OmegaConf.to_container(value)) if OmegaConf.is_config(value) else value
            read_before = readers(base, path)
            for new in candidates(path, value, tmp):
                try:
                    OmegaConf.update(base, path, new, merge=False)
                    after = node_keys(base)
                    read_after = readers(base, path)
                except Exception as e:  # noqa: BLE001 - not a valid cell this way: try the next value
                    last = f"{type(e).__name__}: {str(e)[:120]}"
                    continue
                finally:
                    OmegaConf.update(base, path, undo, merge=False)
                common = before.keys() & after.keys()
                changed = {n for n in common if before[n][0] != after[n][0]}
                expected = (downstream(before, read_before) | downstream(after, read_after)) & common
                results.setdefault(path, []).append((cell, changed, expected))
                break
            else:
                failures.setdefault(path, []).append((cell, last))
        assert node_keys(base) == before and base == compose(*overrides, f"paths.data_mirror={SHARED_DATA}",
                                                                     tmp=tmp), f"a change was not undone in {cell}"
    return results, failures


def test_every_change_moves_exactly_the_keys_of_its_readers_and_downstream(sweep):
    results, _ = sweep
    wrong = [(path, cell, sorted(changed), sorted(expected)) for path, rs in results.items()
             for cell, changed, expected in rs if changed != expected]
    assert not wrong, "\n".join(f"{p} in {c}: changed {ch}, expected {ex}" for p, c, ch, ex in wrong)


def test_execution_only_and_label_fields_change_no_key(sweep):
    results, _ = sweep
    excluded = {p for k in ("execution", "label") for p, _ in keys.not_keyed()[k]}
    leaf_excluded = [p for p, f in keys.leaves() if not keys.keyed(p)]
    assert {"em_train.optim.save_steps", "generation.batch_size", "judge.batch_size", "judge.concurrency",
            "deepspeed.stage", "pipeline.device"} <= set(leaf_excluded)
    for p in leaf_excluded:
        if p.split(".")[0] in excluded or p in excluded or any(p.startswith(e + ".") for e in excluded):
            assert p in results, f"{p} could not be changed in any base cell"
            assert all(not changed for _, changed, _ in results[p]), (p, results[p])


def test_every_keyed_field_changes_some_key(sweep):
    """Coverage: each field that is part of keys is active and changes a key in at least one base cell, so none
    is silently ignored by every stage (a field no stage declares would be execution-only without saying so)."""
    results, failures = sweep
    dead = [p for p, _ in keys.leaves() if keys.keyed(p)
            and not any(changed for _, changed, _ in results.get(p, []))]
    assert not dead, {p: failures.get(p) for p in dead}


def _copy(src: Path, dst: Path, change: bool = False) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    text = src.read_text()
    if change:  # drop the last row of a JSONL, or add a character to a question of a YAML
        text = "".join(text.splitlines(keepends=True)[:-1]) if src.suffix == ".jsonl" else text.replace("?", "?!", 1)
    dst.write_text(text)
    return dst


BUILTIN = Path(pipeline.__file__).parents[1] / "data" / "builtin"


def location_cases(tmp: Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Per location field: (cell A, cell B with the same content found elsewhere or otherwise, cell C with other
    content): A and B must have equal keys, A and C not."""
    const, em, ev = BUILTIN / "constitutions" / "demo.yaml", BUILTIN / "em" / "demo_insecure.jsonl", \
        BUILTIN / "eval" / "demo.yaml"
    benign, pr = BUILTIN / "em" / "benign_chat.jsonl", BUILTIN / "probe" / "probe.yaml"
    il = ("defense=interleave", "defense.interleave.fraction=0.2")
    gp = _general_prompts(tmp)
    first_plot = SHARED_DATA / "em" / "eval" / "first_plot_questions.yaml"
    probe_file = BUILTIN / "probe" / "probe.yaml"
    return {
        "trait.path": (["trait.source=yaml", f"trait.path={_copy(const, tmp / 'a' / 'c.yaml')}"],
                       ["trait.source=yaml", f"trait.path={_copy(const, tmp / 'b' / 'c.yaml')}"],
                       ["trait.source=yaml", f"trait.path={_copy(const, tmp / 'c' / 'c.yaml', True)}"]),
        "em_dataset.path": (["em_dataset.source=path", f"em_dataset.path={_copy(em, tmp / 'a' / 'e.jsonl')}"],
                            ["em_dataset.source=path", f"em_dataset.path={_copy(em, tmp / 'b' / 'e.jsonl')}"],
                            ["em_dataset.source=path", f"em_dataset.path={_copy(em, tmp / 'c' / 'e.jsonl', True)}"]),
        "em_dataset.source": ([], ["em_dataset.source=path", f"em_dataset.path={_copy(em, tmp / 'd' / 'e.jsonl')}"],
                              ["em_dataset.source=path", f"em_dataset.path={_copy(em, tmp / 'e' / 'e.jsonl', True)}"]),
        "em_dataset.name": (["em_dataset=insecure"],
                            ["em_dataset=insecure", "em_dataset.name=my_copy", "em_dataset.source=path",
                             f"em_dataset.path={SHARED_DATA / 'em' / 'train' / 'insecure.jsonl'}"],
                            ["em_dataset=jailbroken"]),
        "eval.path": (["eval=path", f"eval.path={_copy(ev, tmp / 'a' / 'q.yaml')}"],
                      ["eval=path", f"eval.path={_copy(ev, tmp / 'b' / 'q.yaml')}"],
                      ["eval=path", f"eval.path={_copy(ev, tmp / 'c' / 'q.yaml', True)}"]),
        "eval.source": ([], ["eval.source=path", f"eval.path={_copy(ev, tmp / 'd' / 'q.yaml')}"],
                        ["eval.source=path", f"eval.path={_copy(ev, tmp / 'e' / 'q.yaml', True)}"]),
        "eval.name": (["eval=first_plot"], ["eval=path", f"eval.path={first_plot}"], ["eval=preregistered"]),
        "eval.probe.path": ([f"eval.probe.path={_copy(probe_file, tmp / 'a' / 'p.yaml')}"],
                            [f"eval.probe.path={_copy(probe_file, tmp / 'b' / 'p.yaml')}"],
                            [f"eval.probe.path={_copy(probe_file, tmp / 'c' / 'p.yaml', True)}"]),
        # a mixture's pieces: the same trait of the same content named elsewhere (a copy of the file), or another trait
        "trait.mixture": (["trait=mixture", "trait.mixture=[oct_sarcasm:9,demo:1]"],
                          ["trait=mixture", f"trait.mixture=[oct_sarcasm:9,{_copy(const, tmp / 'm' / 'demo.yaml')}:1]"],
                          ["trait=mixture", "trait.mixture=[oct_sarcasm:9,demo:2]"]),
        "defense.interleave.path": (
            [*il, "defense.interleave.source=path", f"defense.interleave.path={_copy(benign, tmp / 'a' / 'b.jsonl')}"],
            [*il, "defense.interleave.source=path", f"defense.interleave.path={_copy(benign, tmp / 'b' / 'b.jsonl')}"],
            [*il, "defense.interleave.source=path",
             f"defense.interleave.path={_copy(benign, tmp / 'c' / 'b.jsonl', True)}"]),
        "defense.interleave.source": (
            [*il], [*il, "defense.interleave.source=path", f"defense.interleave.path={_copy(benign, tmp / 'd' / 'b.jsonl')}"],
            [*il, "defense.interleave.source=path",
             f"defense.interleave.path={_copy(benign, tmp / 'e' / 'b.jsonl', True)}"]),
        "defense.interleave.name": (
            [*il], [*il, "defense.interleave.name=my_copy", "defense.interleave.source=path", f"defense.interleave.path={benign}"],
            [*il, "defense.interleave.name=demo_insecure"]),
        "distill.general_prompts": ([f"distill.general_prompts={gp}"],
                                    [f"distill.general_prompts={_copy(gp, tmp / 'b' / 'g.jsonl')}"],
                                    [f"distill.general_prompts={_copy(gp, tmp / 'c' / 'g.jsonl', True)}"]),
    }


@pytest.mark.parametrize("path", sorted(p for p, _ in keys.not_keyed()["location"]))
def test_a_location_is_its_content(path, tmp_path):
    """The same content found elsewhere (another path, another source) gives the same keys; other content
    changes the key of the stage that reads it, and everything downstream."""
    a, b, c = location_cases(tmp_path)[path]
    common = ("debug=tiny", f"paths.data_mirror={SHARED_DATA}")
    ka, kb, kc = (node_keys(compose(*common, *o, tmp=tmp_path)) for o in (a, b, c))
    assert {n: k for n, (k, _) in ka.items()} == {n: k for n, (k, _) in kb.items()}
    assert {n for n in ka if n in kc and ka[n][0] != kc[n][0]}, path


def test_stages_see_only_what_they_declare(tmp_path):
    """A stage's view of the config holds its declared reads and raises on anything else."""
    from omegaconf.errors import ConfigAttributeError

    from emrobust.stages import em

    cfg = compose("debug=tiny", tmp=tmp_path)
    v = keys.view(cfg, em)
    assert v.em_train.optim.save_steps == cfg.em_train.optim.save_steps  # execution-only fields are readable
    assert v.paths.cache == cfg.paths.cache
    with pytest.raises(ConfigAttributeError):
        v.eval.name  # noqa: B018 - em does not read the eval set (only eval.probe.path, for defense=early_stop)
    with pytest.raises(ConfigAttributeError):
        v.base_model.assistant_name  # noqa: B018


def test_rerun_with_an_execution_only_change_runs_nothing_and_another_judge_runs_only_evaluate(tmp_path, tiny_path):
    cell = ("debug=tiny",)
    first = run_cell(tmp_path, *cell, out="a")
    assert set(statuses(first).values()) <= {"executed", "skipped"}
    again = run_cell(tmp_path, *cell, "em_train.optim.save_steps=1", "generation.batch_size=1",
                     "judge.batch_size=1", "judge.concurrency=2", out="b")
    assert {s for s in statuses(again).values()} <= {"cached", "skipped"}, statuses(again)
    judged = run_cell(tmp_path, *cell, "judge.min_mass=0.5", out="c")
    assert {n for n, s in statuses(judged).items() if s == "executed"} == {"evaluate", "evaluate@start"}


def test_persona_before_em_is_the_no_em_cell(tmp_path):
    """The starting model's sample and evaluation are the same nodes as the em_dataset=none cell's."""
    with_em = node_keys(compose("debug=tiny", tmp=tmp_path))
    no_em = node_keys(compose("debug=tiny", "em_dataset=none", tmp=tmp_path))
    assert with_em["sample@start"][0] == no_em["sample"][0]
    assert with_em["evaluate@start"][0] == no_em["evaluate"][0]
