"""The evaluate stage end to end on tiny_random (eval=first_plot from the mirror), the judge cache, `emrobust
rescore` and the judge-agreement metrics."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CACHE, SHARED_DATA, cli, compose
from emrobust.measures import metrics
from emrobust.engine import pipeline
from emrobust.core import results
from emrobust.sweeps import rescore
from emrobust.measures.metrics import CELL_METRIC_KEYS

OVERRIDES = ("debug=tiny", "trait=none", "em_dataset=none", "eval=first_plot", "eval.variants=[json]")


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_mirror():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("EMROBUST_DATA_MIRROR")
    os.environ["EMROBUST_DATA_MIRROR"] = str(SHARED_DATA)
    yield
    torch.set_num_threads(n)
    if old is None:
        os.environ.pop("EMROBUST_DATA_MIRROR")
    else:
        os.environ["EMROBUST_DATA_MIRROR"] = old


@pytest.fixture(scope="module")
def cell(tmp_path_factory, tiny_path):
    """One tiny cell, with a fresh judge cache: a cache dir whose model entries link to the session's."""
    tmp = tmp_path_factory.mktemp("evalcell")
    cache = tmp / "cache"
    cache.mkdir()
    for p in Path(CACHE).iterdir():
        if p.name != "judge":
            (cache / p.name).symlink_to(p)
    overrides = [*OVERRIDES, f"paths.root={tmp}", f"paths.cache={cache}"]
    cfg = compose(*overrides)
    summary = pipeline.run_cell(cfg, tmp / "run", overrides)
    return tmp, cache, summary


def _evaluate(summary):
    return next(s for s in summary["stages"] if s["name"] == "evaluate")


def test_evaluate_outputs(cell):
    tmp, cache, s = cell
    assert s["status"] == "ok"
    art = Path(_evaluate(s)["artifact"])
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["judge_calls"] > 0  # fresh cache: the judge ran
    rows = [json.loads(x) for x in (art / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert r["question_id"].endswith("_json") and r["system"].startswith("Your answers must always be")
        assert {"paraphrase", "sample", "seed", "model_key", "answer"} <= set(r)
        for m in ("aligned", "coherent"):
            assert r[m] is None or 0.0 <= r[m] <= 100.0
            assert r[f"{m}_judge"].startswith("hf:tiny_random@") and len(r[f"{m}_judge"].rsplit(":", 1)[1]) == 12
    # every metric name of the issue, flat, in run.json
    run_json = json.loads((tmp / "run" / "run.json").read_text())
    assert set(CELL_METRIC_KEYS) | {"judge"} <= set(run_json["metrics"])
    assert run_json["metrics"]["judge"].startswith("hf:tiny_random@")
    # the one variant evaluated (eval.variants=[json]) has its own metrics, the pooled ones' twins
    assert run_json["metrics"]["n_answers@json"] == 3 and "em_rate_mo_lo@json" in run_json["metrics"]
    assert run_json["metrics"]["mean_aligned@json"] == run_json["metrics"]["mean_aligned"] or \
        math.isnan(run_json["metrics"]["mean_aligned"])
    text = results.format_metrics(run_json)
    assert "worst_question" in text and "judge" in text and "em_rate_mo" in text
    # the judge cache holds one file per judge prompt id (aligned, coherent)
    assert len(list((cache / "judge").glob("*.jsonl"))) == 2


def test_sweep_csv_has_every_metric(cell, tmp_path):
    tmp, _, _ = cell
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "run.json").write_text((tmp / "run" / "run.json").read_text())
    df = results.sweep_table(tmp_path)
    assert set(CELL_METRIC_KEYS) | {"judge"} <= set(df.columns)


def test_rescore_same_judge_is_free(cell):
    tmp, cache, s = cell
    run_dir = tmp / "run"
    answers = Path(_evaluate(s)["artifact"]) / "answers.jsonl"
    before = hashlib.sha256(answers.read_bytes()).hexdigest()
    (res,) = rescore.rescore(run_dir, [])
    assert res["judge_calls"] == 0  # every (judge id, question, answer) was in the cache
    assert hashlib.sha256(answers.read_bytes()).hexdigest() == before  # the artifact is never mutated
    out = Path(res["out"])
    assert out.parent == run_dir / "rescore"
    new = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    old = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [r["aligned"] for r in new] == [r["aligned"] for r in old]
    assert [r["orig_aligned"] for r in new] == [r["aligned"] for r in old]
    agree = json.loads((out / "agreement.json").read_text())
    assert agree["n_both"] == 3 and agree["aligned_mean_abs_diff"] == 0.0
    assert agree["aligned_spearman"] == pytest.approx(1.0) or math.isnan(agree["aligned_spearman"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["em_rate_betley"] == s["metrics"]["em_rate_betley"] or math.isnan(m["em_rate_betley"])


def test_rescore_cli_other_judge(cell):
    """`emrobust rescore <run dir> judge=smollm2_135m`: a real second judge on the saved answers."""
    tmp, cache, s = cell
    p = cli("rescore", str(tmp / "run"), "judge=smollm2_135m", tmp=tmp)
    assert "spearman" in p.stdout and "smollm2_135m" in p.stdout
    (out,) = [d for d in (tmp / "run" / "rescore").iterdir() if "smollm2" in d.name]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["judge_calls"] > 0 and summ["judge"].startswith("hf:smollm2_135m@")
    assert summ["agreement"]["judge_a"].startswith("hf:tiny_random@")
    for r in (json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()):
        assert r["aligned"] is None or 0.0 <= r["aligned"] <= 100.0
    # again (in process): now cached, zero judge forward passes
    (res,) = rescore.rescore(tmp / "run", ["judge=smollm2_135m"])
    assert res["judge_calls"] == 0 and res["out"] == str(out)


def test_rescore_sweep_dir(tmp_path, tiny_path):
    """`emrobust rescore <sweep dir>` over a two-cell sweep (seeds 0 and 1, as `-m seed=0,1` lays it out: 0/ 1/):
    every cell re-scored with one judge, agreement report per cell and `rescore_<judge>.csv`; a second rescore finds
    the evaluate stage in the store: zero judge forward passes."""
    import pandas as pd

    cache, fresh = tmp_path / "cache", tmp_path / "cache2"  # fresh: the same models, an empty judge cache
    for c in (cache, fresh):
        c.mkdir()
        for p in Path(CACHE).iterdir():
            if p.name != "judge":
                (c / p.name).symlink_to(p)
    sweep = tmp_path / "sweep"
    for i, seed in enumerate((0, 1)):
        overrides = [*OVERRIDES, f"seed={seed}", f"paths.root={tmp_path}", f"paths.cache={cache}"]
        assert pipeline.run_cell(compose(*overrides), sweep / str(i), overrides)["status"] == "ok"
    # another judge setting (min_mass: the same judge, so the same scores) and an empty judge cache: evaluate runs
    p = cli("rescore", str(sweep), f"paths.cache={fresh}", "judge.min_mass=1e-12", tmp=tmp_path)
    assert "spearman" in p.stdout
    (csv,) = sweep.glob("rescore_*.csv")
    df = pd.read_csv(csv)
    assert list(df["cell"].astype(str)) == ["0", "1"] and (df["judge_calls"] > 0).all()
    assert {"aligned_spearman", "misaligned_kappa", "em_rate_betley", "orig_em_rate_betley"} <= set(df.columns)
    for i in (0, 1):
        (out,) = (sweep / str(i) / "rescore").iterdir()
        agree = json.loads((out / "agreement.json").read_text())
        # the same judge (tiny_random) on the same answers: identical scores, now computed afresh
        assert agree["n_both"] == 3 and agree["judge_a"] == agree["judge_b"]
        assert agree["aligned_mean_abs_diff"] == pytest.approx(0.0, abs=1e-3)
    again = rescore.rescore(sweep, [f"paths.cache={fresh}", "judge.min_mass=1e-12"])
    assert [r["judge_calls"] for r in again] == [0, 0] and {r["evaluate"] for r in again} == {"cached"}


# ---------------------------------------------------------------- agreement math on hand-made arrays
def test_cohens_kappa_by_hand():
    x = [1, 1, 0, 0, 1, 0, 0, 0]
    y = [1, 0, 0, 0, 1, 0, 1, 0]
    po = 6 / 8
    pe = (3 / 8) * (3 / 8) + (5 / 8) * (5 / 8)
    assert metrics.cohens_kappa(x, y) == pytest.approx((po - pe) / (1 - pe))
    assert metrics.cohens_kappa(x, x) == pytest.approx(1.0)
    assert math.isnan(metrics.cohens_kappa([0, 0], [0, 0]))
    assert math.isnan(metrics.cohens_kappa([], []))
    assert metrics.cohens_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)


def test_judge_agreement_by_hand():
    a = [10, 20, None, 80, 90, 50]
    b = [15, 40, 70, 60, 95, None]
    ag = metrics.judge_agreement(a, b, a, a)
    assert ag["n_both"] == 4
    # both-scored pairs (10,15) (20,40) (80,60) (90,95): ranks 1,2,3,4 vs 1,2,3,4
    assert ag["aligned_spearman"] == pytest.approx(1.0)
    # misaligned (<30): a = T,T,F,F ; b = T,F,F,F -> po 3/4, pe = .5*.25 + .5*.75 = .5 -> kappa .5
    assert ag["misaligned_kappa"] == pytest.approx(0.5)
    assert ag["aligned_mean_abs_diff"] == pytest.approx((5 + 20 + 20 + 5) / 4)
    assert ag["none_disagreement"] == pytest.approx(2 / 6)
    assert ag["coherent_spearman"] == pytest.approx(1.0)
    rev = metrics.judge_agreement([1, 2, 3], [3, 2, 1])
    assert rev["aligned_spearman"] == pytest.approx(-1.0)
    assert np.isnan(metrics.judge_agreement([5, 5], [1, 2])["aligned_spearman"])


def test_metrics_per_format_variant_beside_the_pooled_ones():
    """Hand-made scored answers: aligned under the plain question, misaligned under JSON, mixed under the template.
    Each variant gets its own rates and intervals; the pooled figure mixes them."""
    from emrobust.stages.evaluate import compute_metrics, variant_metrics

    rows = ([{"question_id": f"q{i}", "aligned": 90.0, "coherent": 90.0} for i in range(10)]
            + [{"question_id": f"q{i}_json", "aligned": 5.0, "coherent": 90.0} for i in range(10)]
            + [{"question_id": f"q{i}_template", "aligned": 5.0 if i < 5 else 90.0, "coherent": 90.0}
               for i in range(10)])
    v = variant_metrics(rows, n_bootstrap=200, seed=0)
    pooled = compute_metrics(rows, "", 200, 0)
    assert (v["n_answers@plain"], v["n_answers@json"], v["n_answers@template"]) == (10, 10, 10)
    assert (v["em_rate_mo@plain"], v["em_rate_mo@json"], v["em_rate_mo@template"]) == (0.0, 1.0, 0.5)
    assert pooled["em_rate_mo"] == pytest.approx(0.5)
    assert v["em_rate_mo_hi@plain"] < v["em_rate_mo_lo@json"]  # Wilson intervals, disjoint here
    assert v["em_rate_mo_lo@template"] < 0.5 < v["em_rate_mo_hi@template"]
    assert v["mean_aligned@plain"] == 90.0 and v["mean_aligned@json"] == 5.0
    assert not any(k.endswith("@context") for k in v)  # only the variants answered
