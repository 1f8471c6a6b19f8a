"""defense=early_stop on a validated measure (issue 27, part 7): it stops on `probe` or on a persona direction
(`direction_<trait>`, the directions stage upstream of em, as steer has); a measure whose control FAILED on the
cell's base model (emrobust/measures/controls.py) is refused in one line unless allow_failed_control; one not validated
there (tiny_random) runs, and run.json and the report say so. Real tiny models, real directions."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, artifact, cli, compose, run_cell
from emrobust.measures import controls, monitor
from emrobust.train import defenses
from emrobust.core import models, results
from emrobust.engine import pipeline
from emrobust.errors import ConfigError, report
from emrobust.stages import directions

PROBE_ON_SMOLLM2 = ("trait=none", "defense=early_stop", "defense.early_stop.measure=probe",
                    "defense.early_stop.rise=0.05")


def _cfg(*overrides, tmp):
    return compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp)


def test_the_control_table_lives_in_emrobust_and_analysis_reads_it():
    from emrobust.analysis import controls as report_controls

    assert report_controls.CONTROLS is controls.CONTROLS and report_controls.status is controls.status
    assert controls.status("probe_logp_diff", "smollm2_135m") == "FAILED"
    assert controls.status("direction_oct_misalignment", "smollm2_135m") == "passed"
    assert controls.status("direction_oct_misalignment", "tiny_random") == "not validated"


def test_probe_on_smollm2_is_refused_in_one_line_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        pipeline.validate(_cfg(*PROBE_ON_SMOLLM2, tmp=tmp_path))
    assert e.value.where == "defense.early_stop.measure"
    line, _ = report(e.value)
    assert "\n" not in line
    assert line.startswith("emrobust: error: defense.early_stop.measure: measure=probe: probe_logp_diff FAILED its "
                           "negative control on base_model=smollm2_135m"), line
    assert "direction_oct_misalignment" in line and "allow_failed_control=true" in line


def test_the_refusal_is_one_line_from_the_cli_before_any_model_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")}
    p = cli(*PROBE_ON_SMOLLM2, "hydra.run.dir=run", tmp=tmp_path, check=False, env=env)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "defense.early_stop.measure" in p.stderr and "FAILED" in p.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["stages"] == []


def test_allow_failed_control_accepts_it_and_changes_no_key(tmp_path):
    allowed = _cfg(*PROBE_ON_SMOLLM2, "defense.early_stop.allow_failed_control=true", tmp=tmp_path)
    pipeline.validate(allowed)
    # a gate, not what is built: the em key is the same cell's
    keyed = {n.id: n.key for n in pipeline.plan(allowed)}
    plain = _cfg(*PROBE_ON_SMOLLM2, tmp=tmp_path)
    assert keyed == {n.id: n.key for n in pipeline.plan(plain)}
    assert defenses.cell_control(allowed) == {"early_stop_measure": "probe", "early_stop_control": "FAILED",
                                              "early_stop_allow_failed_control": True}


def test_the_preset_stops_on_a_direction_that_passed_on_smollm2(tmp_path):
    cfg = _cfg("trait=none", "defense=early_stop", tmp=tmp_path)
    pipeline.validate(cfg)
    assert cfg.defense.early_stop.measure == "direction_oct_misalignment" and cfg.eval.monitor.enabled
    em = next(n for n in pipeline.graph(cfg) if n.id == "em")
    assert em.upstream == {"start": "base", "directions": "directions"}
    assert defenses.cell_control(cfg)["early_stop_control"] == "passed"
    # the probe measure needs no directions
    probe = _cfg(*PROBE_ON_SMOLLM2, "defense.early_stop.allow_failed_control=true", "eval.monitor.enabled=false",
                 tmp=tmp_path)
    assert next(n for n in pipeline.graph(probe) if n.id == "em").upstream == {"start": "base"}


@pytest.mark.parametrize("overrides,where,text", [
    (["defense.early_stop.measure=loss"], "defense.early_stop.measure", "neither `probe`, `task` nor `direction_<trait>`"),
    (["defense.early_stop.measure=direction_oct_humor"], "defense.early_stop.measure", "has no direction"),
    (["eval.monitor.enabled=false"], "eval.monitor.enabled", "directions"),
    (["defense.early_stop.split=b", "eval.probe.splits=[a]"], "defense.early_stop.split", "split b"),
    (["defense.early_stop.measure="], "defense.early_stop.measure", "neither"),
])
def test_a_measure_that_cannot_be_read_is_refused(tmp_path, overrides, where, text):
    with pytest.raises(ConfigError) as e:
        pipeline.validate(_cfg("debug=tiny", "trait=none", "defense=early_stop", *overrides, tmp=tmp_path))
    assert e.value.where == where and text in report(e.value)[0], report(e.value)


def test_a_direction_measure_on_tiny_random_runs_and_says_not_validated(tmp_path, tiny_path):
    """A debug=tiny early_stop cell on the direction: the directions stage is built and read by em, the stopper's
    checks are the monitor's projection of the training model on the split-a questions, training stops at the
    first check (rise -100), and run.json and the report's headline say the measure is not validated here."""
    s = run_cell(tmp_path, "debug=tiny", "trait=none", "defense=early_stop", "eval.monitor.n_prompts=4",
                 "eval.monitor.max_new_tokens=8", "defense.early_stop.every=1", "defense.early_stop.rise=-100")
    assert s["status"] == "ok"
    em = json.loads((artifact(s, "em") / "manifest.json").read_text())
    d = em["defense"]
    assert d["measure"] == "direction_oct_misalignment" and d["stopped_at"] == 1 == em["train"]["steps"]
    assert set(d["checks"]) == {"0", "1"}
    # step 0 is the base model's projection on the direction, as the monitor reads it, on the split-a questions
    layer, vectors = directions.load(artifact(s, "directions"))
    cfg = _cfg("debug=tiny", "trait=none", "defense=early_stop", tmp=tmp_path)
    qs = [it["question"] for it in defenses.stop_items(cfg)]
    base = models.load(tiny_path, torch.device("cpu"))
    tok = models.load_tokenizer(tiny_path)
    m, _ = monitor.project(base, tok, qs, layer, {"oct_misalignment": vectors["oct_misalignment"]}, 10)
    assert d["checks"]["0"] == pytest.approx(m["direction_oct_misalignment"], abs=1e-4)
    assert s["metrics"]["early_stop_measure"] == "direction_oct_misalignment"
    assert s["metrics"]["early_stop_control"] == "not validated"
    from emrobust.analysis import controls as report_controls

    lines = report_controls.headline(pd.DataFrame([results.cell_row("0", s | {"choices": {"base_model": "tiny_random"}})]))
    assert any("Early stopping on `direction_oct_misalignment` on `tiny_random`: not validated" in x for x in lines)
