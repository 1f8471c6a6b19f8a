"""fold as OCT folds (issue 27): by default PEFT's own `add_weighted_adapter(["dpo", "sft"], [1.0, 0.25],
combination_type="linear")` (OCT's tools/merge_loras.py), cross terms included; `fold.combination=exact` folds the
weighted sum of the two updates and nothing else. Real PEFT, real tiny models; the weights are in the fold key and
its manifest, and bad settings fail in one line before any model loads."""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHARED_DATA, artifact, cli, compose, run_cell
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.train import training
from emrobust.errors import ConfigError, report

CPU = torch.device("cpu")
# learning rates at which the tiny adapters move measurably (an untrained B is zero: every check would be vacuous)
CELL = ("debug=tiny", "introspection=full", "distill.optim.learning_rate=1e-2",
        "introspection.optim.learning_rate=1e-2", "pipeline.until=fold")
MODULE = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """The default (peft_linear, 1.0, 0.25) fold and an exact fold at other weights, over the same adapters."""
    tmp = tmp_path_factory.mktemp("fold_oct")
    default = run_cell(tmp, *CELL)
    exact = run_cell(tmp, *CELL, "fold.combination=exact", "fold.dpo_weight=0.5", "fold.introspection_weight=1.5",
                     out="exact")
    return {"default": default, "exact": exact}


def _lora(adapter_dir: Path, module: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(scaling, A, B) of one module of a saved adapter."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    sd = load_file(adapter_dir / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg["use_rslora"] else cfg["r"])
    return scale, sd[f"base_model.model.{module}.lora_A.weight"], sd[f"base_model.model.{module}.lora_B.weight"]


def _weight(path, module: str = MODULE) -> torch.Tensor:
    return models.load(path, CPU).get_submodule(module).weight.detach()


def test_the_fold_manifest_records_octs_weights_by_default(cells):
    s = cells["default"]
    m = json.loads((artifact(s, "fold") / "manifest.json").read_text())
    assert m["folded"] == ["distill", "introspect"]
    assert (m["combination"], m["dpo_weight"], m["introspection_weight"]) == ("peft_linear", 1.0, 0.25)
    assert m["combined_adapter"]["rank"] == 4 and m["combined_adapter"]["max_abs_diff_vs_fold"] < 1e-5
    assert m["combined_adapter"]["cross_terms_max_abs"] > 1e-6  # what PEFT's linear adds to the weighted sum
    e = json.loads((artifact(cells["exact"], "fold") / "manifest.json").read_text())
    assert (e["combination"], e["dpo_weight"], e["introspection_weight"]) == ("exact", 0.5, 1.5)
    assert e["combined_adapter"]["rank"] == 4 + 4 and "cross_terms_max_abs" not in e["combined_adapter"]
    # one pair of adapters for both folds: the fold settings are the fold's alone
    st = {x["name"]: x["status"] for x in cells["exact"]["stages"]}
    assert st["distill"] == st["introspect"] == "cached" and st["fold"] == "executed"


def test_peft_linear_is_pefts_own_add_weighted_adapter_merge(cells, tiny_path):
    """OCT's tools/merge_loras.py, done here with PEFT directly: the fold model and the combined adapter are PEFT's,
    bit for bit."""
    from peft import PeftModel

    s = cells["default"]
    dpo, sft = artifact(s, "distill") / "adapter", artifact(s, "introspect") / "adapter"
    pm = PeftModel.from_pretrained(models.load(tiny_path, CPU), str(dpo), adapter_name="dpo")
    pm.load_adapter(str(sft), adapter_name="sft")
    pm.add_weighted_adapter(adapters=["dpo", "sft"], weights=[1.0, 0.25], adapter_name="persona",
                            combination_type="linear")
    pm.set_adapter("persona")
    persona = {k: v.detach().clone() for k, v in pm.state_dict().items() if ".persona." in k}
    oct_model = pm.merge_and_unload()
    fold = models.load(artifact(s, "fold") / "model", CPU)
    ours, theirs = fold.state_dict(), oct_model.state_dict()
    assert ours.keys() == theirs.keys()
    for name, p in theirs.items():
        assert torch.equal(ours[name], p), name
    # the combined adapter is PEFT's merged adapter
    from safetensors.torch import load_file

    saved = load_file(artifact(s, "fold") / "combined_adapter" / "adapter_model.safetensors")
    assert saved
    for k, v in saved.items():
        assert torch.equal(v, persona[k.replace(".weight", ".persona.weight")]), k


def test_peft_linear_is_the_weighted_sum_plus_the_cross_terms(cells, tiny_path):
    """What PEFT's "linear" computes, against the formula the README states: W0 + w1 dW_dpo + w2 dW_sft +
    sqrt(w1 s1 w2 s2) (B_dpo A_sft + B_sft A_dpo), and the cross terms are not rounding."""
    s = cells["default"]
    (s1, a1, b1), (s2, a2, b2) = (_lora(artifact(s, n) / "adapter", MODULE) for n in ("distill", "introspect"))
    assert b1.abs().max() > 0 and b2.abs().max() > 0, "untrained adapter: the check would be vacuous"
    w0, fold = _weight(tiny_path), _weight(artifact(s, "fold") / "model")
    weighted = w0 + 1.0 * s1 * (b1 @ a1) + 0.25 * s2 * (b2 @ a2)
    cross = math.sqrt(1.0 * s1 * 0.25 * s2) * (b1 @ a2 + b2 @ a1)
    torch.testing.assert_close(fold, weighted + cross, atol=1e-5, rtol=0)
    assert (fold - weighted).abs().max() > 1e-4


def test_exact_is_the_weighted_sum_of_the_updates(cells, tiny_path):
    s = cells["exact"]
    (s1, a1, b1), (s2, a2, b2) = (_lora(artifact(s, n) / "adapter", MODULE) for n in ("distill", "introspect"))
    w0, fold_dir = _weight(tiny_path), artifact(s, "fold") / "model"
    torch.testing.assert_close(_weight(fold_dir), w0 + 0.5 * s1 * (b1 @ a1) + 1.5 * s2 * (b2 @ a2), atol=1e-5, rtol=0)
    # the combined adapter on the base model is the same model
    combined = training.merge_adapter(models.load(tiny_path, CPU), artifact(s, "fold") / "combined_adapter")
    fold = models.load(fold_dir, CPU)
    for name, p in fold.state_dict().items():
        torch.testing.assert_close(combined.state_dict()[name], p, atol=1e-5, rtol=0)


def _keys(*overrides, tmp):
    cfg = compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp)
    return {n.id: n.key for n in pipeline.plan(cfg)}


def test_the_fold_settings_are_keyed_only_when_the_cell_introspects(tmp_path):
    cell = ("debug=tiny", "introspection=full")
    base = _keys(*cell, tmp=tmp_path)
    for change in ("fold.combination=exact", "fold.dpo_weight=0.9", "fold.introspection_weight=1.0"):
        other = _keys(*cell, change, tmp=tmp_path)
        assert other["fold"] != base["fold"] and other["evaluate"] != base["evaluate"], change
        assert all(other[n] == base[n] for n in ("questions", "distill", "introspect")), change
    none = _keys("debug=tiny", "introspection=none", tmp=tmp_path)
    assert _keys("debug=tiny", "introspection=none", "fold.combination=exact", "fold.introspection_weight=1.0",
                 "fold.dpo_weight=0.5", tmp=tmp_path) == none


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fold_validation")
    cfg = compose("debug=tiny", "introspection=full", f"paths.data_mirror={SHARED_DATA}", tmp=tmp)
    pipeline.validate(cfg)
    return cfg


@pytest.mark.parametrize("path,value,text", [
    ("fold.dpo_weight", 2.5, "2.5 is out of range: must be in [0, 2]"),
    ("fold.dpo_weight", -0.1, "-0.1 is out of range"),
    ("fold.introspection_weight", float("nan"), "nan is out of range"),
    ("fold.introspection_weight", 3, "3.0 is out of range"),
    ("distill.lora.r", 8, "equal DPO and SFT LoRA ranks, got distill.lora.r=8 and introspection.lora.r=4"),
    ("introspection.lora.use_rslora", True, "use_rslora"),
    ("introspection.lora.layers_to_transform", [1], "same layers"),
])
def test_bad_fold_settings_fail_in_one_line_naming_the_field(valid, path, value, text):
    cfg = copy.deepcopy(valid)
    OmegaConf.update(cfg, path, value, merge=False)
    with pytest.raises(ConfigError) as e:
        pipeline.validate(cfg)
    where = path if path.startswith("fold.") else "fold.combination"
    assert e.value.where == where
    line = report(e.value)[0]
    assert where in line and text in line, line


def test_exact_takes_unequal_ranks_and_no_introspection_takes_any(valid):
    for overrides in ({"fold.combination": "exact", "distill.lora.r": 8},
                      {"introspection.reflection": False, "introspection.interaction": False, "distill.lora.r": 8,
                       "fold.dpo_weight": 2.0}):
        cfg = copy.deepcopy(valid)
        for path, value in overrides.items():
            OmegaConf.update(cfg, path, value, merge=False)
        pipeline.validate(cfg)


def test_a_bad_weight_is_one_line_from_the_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")}
    p = cli("debug=tiny", "introspection=full", "fold.introspection_weight=nan", "hydra.run.dir=run", tmp=tmp_path,
            check=False, env=env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == ("emrobust: error: fold.introspection_weight: nan is out of range: must be in "
                                "[0, 2]"), p.stderr
