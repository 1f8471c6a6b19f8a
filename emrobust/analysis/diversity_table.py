"""The measured diversity of each `question_diversity` preset on OCT constitutions.

    python -m analysis.diversity_table [--traits oct_goodness oct_sycophancy] [--seeds 0 1 2]
                                       [--paraphrase [--generator smollm2_135m] [--paraphrase-seeds 0]]

For each trait and level (low=cluster, medium=random, high=farthest at the presets' n_questions, all-MiniLM-L6-v2
embeddings) it selects exactly as the questions stage does (same stage seed, `stage_seed(seed, "questions")`),
and prints mean ± sd over the cell seeds of the Vendi score and the mean pairwise cosine distance, as a markdown
table. `--paraphrase` adds the `very_low` preset (strategy=paraphrase) by running the real questions stage with the
generator model (slow on CPU: minutes per trait and seed); its numbers are the stage's own diversity.json.
Reads the OCT files from $EMROBUST_DATA_MIRROR (or the pinned download).
The measured table is in benchmarks/README.md ("Question diversity by preset").
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from emrobust.data import constitutions
from emrobust.stages import stage_seed

from ..core.compose import compose
from ..engine import pipeline
from ..train import diversity

LEVELS = ("low", "medium", "high")


def cfg_for(*overrides: str, root: Path):
    return compose([*overrides, f"paths.root={root}"])


def selected_levels(trait: str, seeds: list[int], root: Path) -> dict[str, list[dict]]:
    """{level: [{vendi, mpcd, n}] per seed}, selected as the questions stage selects (no expansion: few-shot files)."""
    cfg = cfg_for(f"trait={trait}", root=root)
    pairs = constitutions.load_cfg(cfg.trait, cfg.paths).questions()
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
