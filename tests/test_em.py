"""em stage options on tiny_random: rank-1 preset, full fine-tuning, the random-LoRA control, checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import error_text, run_cell as run, artifact as art, compose
from emrobust.core import models
from emrobust.engine import pipeline
from emrobust.train import training
from emrobust.errors import ConfigError

TINY = ("debug=tiny", "trait=none")


def manifest(summary: dict, stage: str) -> dict:
    return json.loads((art(summary, stage) / "manifest.json").read_text())


def test_rank1_preset_is_one_rank1_down_proj(tiny_path, tmp_path):
    cfg = compose("base_model=tiny_random", "em_train=rank1", tmp=tmp_path)
    assert cfg.em_train.lora.r == 1 and cfg.em_train.lora.alpha == 512 and cfg.em_train.optim.learning_rate == 2e-5
    model = models.load(tiny_path, torch.device("cpu"))
    peft = training.attach_lora(model, cfg.em_train.lora, cfg.base_model, seed=0)
    names = [n for n, _ in peft.named_parameters() if "lora_" in n]
    # tiny_random has 2 layers: the middle one of (0, 1) at fraction 0.5 rounds to 0
    assert len(names) == 2 and all(".layers.0.mlp.down_proj.lora_" in n for n in names), names
    a = next(p for n, p in peft.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 1
    lc = OmegaConf.merge(cfg.em_train.lora, {"layers_to_transform": [1]})
    peft2 = training.attach_lora(models.load(tiny_path, torch.device("cpu")), lc, cfg.base_model, seed=0)
    assert all(".layers.1.mlp.down_proj." in n for n, _ in peft2.named_parameters() if "lora_" in n)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_path):
    """An ordinary EM cell (trait=none), stopping after em, with a checkpoint every step."""
    tmp = tmp_path_factory.mktemp("em")
    return tmp, run(tmp, *TINY, "pipeline.until=em", "em_train.optim.save_steps=1")


def test_checkpoints_are_written_during_training_and_removed(plain):
    tmp, s = plain
    m = manifest(s, "em")
    assert m["checkpoints"] == [1, 2] and m["train"]["steps"] == 2  # save_steps=1, max_steps=2
    assert not (art(s, "em") / "trainer").exists()
    assert not any("checkpoint" in f for f in m["files"])
    assert (art(s, "em") / "adapter" / "adapter_model.safetensors").exists()
    assert set(m["adapter_norms"]) and all(v > 0 for v in m["adapter_norms"].values())


def test_random_lora_matches_the_trained_norms(plain):
    tmp, s = plain
    trained = manifest(s, "em")
    r = run(tmp, *TINY, "pipeline.until=em", "em_train.optim.save_steps=1", "em_control=random_lora", out="rand")
    m = manifest(r, "em")
    assert art(r, "em") != art(s, "em")  # the control is its own artifact
    assert m["control"] == "random_lora" and m["random_lora"]["match"] == "trained"
    # same seed and data: the in-stage EM training reproduces the plain cell's adapter, whose norms are matched
    assert m["init_adapter_fingerprint"] == trained["init_adapter_fingerprint"]
    target = m["random_lora"]["target_norms"]
    assert target.keys() == trained["adapter_norms"].keys()
    for k, v in trained["adapter_norms"].items():
        assert target[k] == pytest.approx(v, rel=1e-5)
        assert m["random_lora"]["norms"][k] == pytest.approx(v, rel=1e-4)
    # ...but the saved adapter is not the trained one: same norms, random direction
    assert m["random_lora"]["adapter_fingerprint"] != m["random_lora"]["trained_adapter_fingerprint"]
    from safetensors.torch import load_file

    sd_r = load_file(art(r, "em") / "adapter" / "adapter_model.safetensors")
    sd_t = load_file(art(s, "em") / "adapter" / "adapter_model.safetensors")
    b = [k for k in sd_r if "lora_B" in k]
    assert b and all(not torch.allclose(sd_r[k], sd_t[k]) for k in b)
    cos = torch.nn.functional.cosine_similarity(torch.cat([sd_r[k].flatten() for k in b]),
                                                torch.cat([sd_t[k].flatten() for k in b]), dim=0)
    assert abs(float(cos)) < 0.5


def test_random_lora_with_a_target_norm_trains_nothing(tmp_path, tiny_path):
    s = run(tmp_path, *TINY, "em_control=random_lora", "em_control.match=target", "em_control.target_norm=0.25")
    assert s["status"] == "ok"  # evaluate ran on persona + random adapter
    m = manifest(s, "em")
    assert m["train"] is None and m["checkpoints"] == [] and not (art(s, "em") / "train_log.json").exists()
    norms = m["random_lora"]["norms"]
    assert len(norms) == 2 * 7 and all(v == pytest.approx(0.25, rel=1e-4) for v in norms.values())


@pytest.mark.parametrize("overrides,match", [
    (("em_control=random_lora", "em_dataset=none"), "em_dataset=none"),
    (("em_control=random_lora", "em_control.match=target"), "target_norm"),
    (("em_control=random_lora", "em_train=full"), "full_finetune"),
])
def test_em_control_bad_config(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        pipeline.validate(compose(*TINY, *overrides, tmp=tmp_path))


@pytest.mark.parametrize("override,choices", [
    ("em_control.match=nearest", "[trained, target]"),
    ("em_control.name=shuffled", "[none, random_lora]"),
    ("em_train.packing=wrapped", "[none, padding_free, bfd]"),
])
def test_unknown_choice_fails_at_composition_listing_the_choices(tmp_path, override, choices):
    with pytest.raises(Exception) as e:
        compose(*TINY, override, tmp=tmp_path)
    assert f"Invalid value '{override.split('=')[1]}', expected one of {choices}" in error_text(e.value)
    assert override.split("=")[0] in error_text(e.value)


def test_full_finetune_saves_a_model_that_evaluate_loads(tmp_path, tiny_path):
    s = run(tmp_path, *TINY, "em_train=full", "em_train.optim.learning_rate=1e-3")
    assert s["status"] == "ok"
    a = art(s, "em")
    m = manifest(s, "em")
    assert (a / "model" / "model.safetensors").exists() and not (a / "adapter").exists()
    assert m["full_finetune"] is True and m["init_adapter_fingerprint"] is None
    assert m["end_fingerprint"] != m["start_fingerprint"]  # every weight trained
    assert m["end_fingerprint"] == models.fingerprint(models.load(a / "model", torch.device("cpu")))


def test_packing_is_in_the_em_key_and_the_padded_default_keeps_the_old_key(tmp_path):
    keys = {}
    for mode in ("none", "padding_free", "bfd"):
        cfg = compose(*TINY, f"em_train.packing={mode}", tmp=tmp_path)
        node = next(n for n in pipeline.plan(cfg) if n.name == "em")
        keys[mode] = node.key
        assert node.key_config["em_train"]["packing"] == mode
    assert len(set(keys.values())) == 3
