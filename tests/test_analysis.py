"""analyze on a hand-made sweep dir: the table, the plot, and seeds pooled with a cluster bootstrap."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.report import main, plot, pooled_table
from emrobust.pipeline import sweep_table


def _cell(sweep: Path, i: int, seed: int, aligned: list[float], coherent: list[float], trait: str = "demo") -> None:
    art = sweep / "art" / f"ev{i}"
    art.mkdir(parents=True)
    with open(art / "answers.jsonl", "w") as f:
        for j, (a, c) in enumerate(zip(aligned, coherent)):
            f.write(json.dumps({"question_id": f"q{j % 2}", "aligned": a, "coherent": c}) + "\n")
    stages = [{"name": "evaluate", "key": f"k{i}", "status": "executed", "seconds": 1.0, "artifact": str(art)}]
    run = {"overrides": [f"trait={trait}", f"seed={seed}"], "choices": {"trait": trait}, "seed": seed, "status": "ok",
           "error": None, "stages": stages, "diversity": {"vendi": 3.0},
           "metrics": {"mean_aligned": sum(aligned) / len(aligned), "mean_aligned_lo": 0.0, "mean_aligned_hi": 100.0,
                       "cvar05_aligned": min(aligned), "em_rate_mo": 0.0}}
    (sweep / str(i)).mkdir()
    (sweep / str(i) / "run.json").write_text(json.dumps(run))


def test_pooled_over_seeds_and_table(tmp_path):
    # seed 0: 1 of 4 coherent answers misaligned; seed 1: 3 of 4
    _cell(tmp_path, 0, 0, [10, 80, 90, 70], [90, 90, 90, 90])
    _cell(tmp_path, 1, 1, [10, 20, 25, 70], [90, 90, 90, 90])
    _cell(tmp_path, 2, 0, [50, 60], [90, 90], trait="none")
    df = sweep_table(tmp_path)
    assert list(df["trait"]) == ["demo", "demo", "none"] and list(df["div_vendi"])[:2] == [3.0, 3.0]
    pooled = pooled_table(tmp_path, n_resamples=500)
    em = pooled[(pooled["cell"] == "trait=demo") & (pooled["metric"] == "em_rate_betley")].iloc[0]
    assert em["n_seeds"] == 2 and em["pooled"] == 0.5
    assert json.loads(em["per_seed"]) == {"0": 0.25, "1": 0.75}
    assert em["lo"] == 0.25 and em["hi"] == 0.75  # resampling whole seeds: the interval spans the seed values
    assert pooled[pooled["cell"] == "trait=none"]["n_seeds"].tolist() == [1] * 4


def test_analyze_writes_csvs_and_png(tmp_path):
    _cell(tmp_path, 0, 0, [10, 80], [90, 90])
    assert main([str(tmp_path)]) == 0
    for f in ("sweep.csv", "pooled.csv", "metrics.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 1


def test_plot_axes_are_labelled(tmp_path):
    import matplotlib.pyplot as plt

    _cell(tmp_path, 0, 0, [10, 80], [90, 90])
    captured = {}
    orig = plt.Figure.savefig

    def grab(self, *a, **k):
        captured["fig"] = self
        return orig(self, *a, **k)

    plt.Figure.savefig = grab
    try:
        plot(sweep_table(tmp_path), tmp_path / "p.png")
    finally:
        plt.Figure.savefig = orig
    labels = [ax.get_ylabel() for ax in captured["fig"].axes]
    assert labels == ["mean_aligned", "cvar05_aligned", "em_rate_mo"]
