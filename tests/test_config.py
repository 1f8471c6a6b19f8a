"""Every option of every config group composes against the structured schema; bad values fail at compose."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose

GROUPS = ["base_model", "trait", "question_diversity", "introspection", "em_dataset", "em_train", "em_control", "eval",
          "paths", "tracking", "experiment", "debug", "cell"]


def options():
    for g in GROUPS:
        for f in sorted((CONF / g).glob("*.yaml")):
            yield g, f.stem


@pytest.mark.parametrize("group,option", list(options()))
def test_every_option_composes(group, option, tmp_path):
    prefix = "+" if group == "cell" else ""
    cfg = compose(f"{prefix}{group}={option}", tmp=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.seed == 0


def test_all_groups_present():
    for g in GROUPS:
        assert list((CONF / g).glob("*.yaml")), g
    assert (CONF / "hydra" / "launcher" / "local.yaml").exists()


def test_schema_rejects_wrong_type(tmp_path):
    with pytest.raises(Exception, match="distill.beta|beta"):
        compose("distill.beta=notanumber", tmp=tmp_path)


def test_schema_rejects_unknown_key(tmp_path):
    with pytest.raises(Exception, match="not_a_key"):
        compose("distill.not_a_key=1", tmp=tmp_path)


def test_unknown_trait_names_the_group(tmp_path):
    with pytest.raises(Exception, match="trait"):
        compose("trait=no_such_persona", tmp=tmp_path)


def test_debug_tiny_shrinks(tmp_path):
    cfg = compose("debug=tiny", tmp=tmp_path)
    assert cfg.base_model.name == "tiny_random"
    assert cfg.eval.judge.model == "tiny_random"
    assert cfg.em_train.optim.max_steps == 2


def test_demo_cells(tmp_path):
    for cell, trait, qd in [("none", "none", "full"), ("demo_low", "demo", "low"), ("demo_high", "demo", "high")]:
        cfg = compose("experiment=demo", f"+cell={cell}", tmp=tmp_path)
        assert cfg.trait.name == trait and cfg.question_diversity.name == qd
        assert cfg.em_dataset.name == "demo_insecure" and cfg.eval.name == "demo"
