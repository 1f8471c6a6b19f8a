"""The measured diversity of each `question_diversity` preset on OCT constitutions (the issue-4 closing table).

    python -m analysis.diversity_table [--traits oct_goodness oct_sycophancy] [--seeds 0 1 2]
                                       [--paraphrase [--generator smollm2_135m] [--paraphrase-seeds 0]]

For each trait and level (low=cluster, medium=random, high=farthest at the presets' n_questions, all-MiniLM-L6-v2
embeddings) it selects exactly as the questions stage does (same stage seed, `stage_seed(seed, "questions")`),
and prints mean ± sd over the cell seeds of the Vendi score and the mean pairwise cosine distance, as a markdown
table. `--paraphrase` adds the `very_low` preset (strategy=paraphrase) by running the real questions stage with the
generator model (slow on CPU: minutes per trait and seed); its numbers are the stage's own diversity.json.
Reads the OCT files from $EMROBUST_DATA_MIRROR (or the pinned download).

Last measurement (2026-11-27, `--paraphrase`, SmolLM2-135M generator on a shared 2-core CPU, ~12 min, of which
the paraphrase cells ~10; very_low: 3 random seeds, 47 paraphrases with MiniLM cosine >= 0.5 to their seed,
23 / 16 candidates dropped as too far, 5 / 6 rounds):

| trait | level | strategy | n_questions | seeds | Vendi | mean pairwise cosine distance |
|---|---|---|---|---|---|---|
| oct_goodness | very_low (smollm2_135m) | paraphrase | 50 | 0 | 11.31 | 0.71 |
| oct_goodness | low | cluster | 50 | 0,1,2 | 15.27 ± 2.86 | 0.61 ± 0.07 |
| oct_goodness | medium | random | 50 | 0,1,2 | 28.63 ± 1.06 | 0.84 ± 0.01 |
| oct_goodness | high | farthest | 50 | 0,1,2 | 43.12 ± 0.09 | 0.96 ± 0.00 |
| oct_sycophancy | very_low (smollm2_135m) | paraphrase | 50 | 0 | 12.39 | 0.70 |
| oct_sycophancy | low | cluster | 50 | 0,1,2 | 24.50 ± 6.34 | 0.79 ± 0.07 |
| oct_sycophancy | medium | random | 50 | 0,1,2 | 34.35 ± 2.42 | 0.89 ± 0.01 |
| oct_sycophancy | high | farthest | 50 | 0,1,2 | 42.67 ± 0.23 | 0.95 ± 0.00 |

The very_low rows above used random seed questions; the preset now picks its 3 seeds from one cluster
(seed_strategy=cluster), measured with `emrobust trait=<t> question_diversity=very_low pipeline.until=questions`:
goodness Vendi 9.29 / distance 0.49, sycophancy 12.28 / 0.66 (seed 0), below `low` on both measures.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from emrobust import diversity, pipeline
from emrobust.config import register
from emrobust.stages import questions, stage_seed

CONF = Path(__file__).resolve().parents[1] / "conf"
LEVELS = ("low", "medium", "high")


def cfg_for(*overrides: str, root: Path):
    register()
    extra = [f"paths.root={root}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra])


def selected_levels(trait: str, seeds: list[int], root: Path) -> dict[str, list[dict]]:
    """{level: [{vendi, mpcd, n}] per seed}, selected as the questions stage selects (no expansion: few-shot files)."""
    cfg = cfg_for(f"trait={trait}", root=root)
    pairs = questions.load_constitution(cfg).questions()
    texts, traits = [q for _, q in pairs], [t for t, _ in pairs]
    emb = diversity.embed(texts, "minilm")
    out = {}
    for level in LEVELS:
        qd = cfg_for(f"trait={trait}", f"question_diversity={level}", root=root).question_diversity
        assert qd.embedder == "minilm", level
        rows = []
        for s in seeds:
            idx = diversity.select(texts, traits, qd, stage_seed(s, "questions"), emb=emb)
            rows.append({"vendi": diversity.vendi(emb[idx]),
                         "mpcd": diversity.mean_pairwise_cosine_distance(emb[idx]), "n": len(idx)})
        out[level] = rows
    return out


def paraphrase_level(trait: str, seeds: list[int], generator: str, root: Path, extra: list[str]) -> list[dict]:
    rows = []
    for s in seeds:
        over = [f"base_model={generator}", f"trait={trait}", "question_diversity=very_low", f"seed={s}",
                "pipeline.until=questions", "tracking=none", *extra]
        cfg = cfg_for(*over, root=root)
        pipeline.validate(cfg)
        d = pipeline.run_cell(cfg, root / f"{trait}_{s}", over)["diversity"]
        rows.append({"vendi": d["vendi"], "mpcd": d["mean_pairwise_cosine_distance"], "n": d["n_questions"]})
    return rows


def fmt(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows])
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traits", nargs="+", default=["oct_goodness", "oct_sycophancy"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--paraphrase", action="store_true", help="also run the very_low (paraphrase) preset")
    ap.add_argument("--generator", default="smollm2_135m", help="base_model that writes the paraphrases")
    ap.add_argument("--paraphrase-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--override", nargs="*", default=[], help="extra overrides for the paraphrase cells")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the stage's paraphrase statistics
    lines = ["| trait | level | strategy | n_questions | seeds | Vendi | mean pairwise cosine distance |",
             "|---|---|---|---|---|---|---|"]
    strategy = {"very_low": "paraphrase", "low": "cluster", "medium": "random", "high": "farthest"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for trait in a.traits:
            table = {}
            if a.paraphrase:
                table["very_low"] = (paraphrase_level(trait, a.paraphrase_seeds, a.generator, root, a.override),
                                     a.paraphrase_seeds)
            table |= {lv: (rows, a.seeds) for lv, rows in selected_levels(trait, a.seeds, root).items()}
            for level, (rows, seeds) in table.items():
                name = level + (f" ({a.generator})" if level == "very_low" else "")
                lines.append(f"| {trait} | {name} | {strategy[level]} | {rows[0]['n']} | "
                             f"{','.join(map(str, seeds))} | {fmt(rows, 'vendi')} | {fmt(rows, 'mpcd')} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
