"""Judge-free contrasts of a sweep: each cell's probe and persona-direction projections against the base model.

For every ok cell with a persona (trait != none) and the cell of the same sweep without one (trait=none; or with
the `reference` trait: `against(sweep, "oct_goodness")` is probe_control's negative control read directly) that
matches it on seed, base model and EM dataset: the per-item difference of the probe's log-probability gap
(misaligned minus aligned answer; emrobust/measures/probe.py) between the cell's model and the base model, averaged over
items with a bootstrap interval paired over items, and the same for each direction projection (paired over
held-out prompts; emrobust/measures/monitor.py). A reading says which way it moved: an interval above 0 means the model
prefers misaligned answers (or projects higher on that direction) more than the base model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .controls import NEGATIVE, NEUTRAL, POSITIVE

MATCH = ("seed", "base_model", "em_dataset")


def _final_sample(run: dict) -> Path | None:
    st = next((s for s in run.get("stages", []) if s["name"] == "sample" and s.get("artifact")), None)
    return Path(st["artifact"]) if st else None


def _rows(path: Path | None, name: str) -> list[dict]:
    f = path / name if path else None
    return [json.loads(x) for x in f.read_text().splitlines()] if f and f.exists() else []


def _paired(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, float]:
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, (n_resamples, d.size))].mean(1) if d.size else np.array([np.nan])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def reading(lo: float, hi: float, what: str, other: str = "the base model") -> str:
    if lo > 0:
        return f"{what} above {other}"
    if hi < 0:
        return f"{what} below {other}"
    return f"no detectable difference from {other}"


def against_base(sweep_dir: Path, n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per (persona cell, measure): the paired difference from the matching base-model cell."""
    return against(sweep_dir, "none", n_resamples, seed)


def _cells(sweep_dir: Path) -> dict[str, tuple[dict, Path | None, int | None]]:
    """The ok cells of a sweep: name -> (choices with overrides, final sample artifact, seed)."""
    cells = {}
    for rj in sorted(Path(sweep_dir).glob("*/run.json")):
        run = json.loads(rj.read_text())
        if run.get("status") != "ok":
            continue
        choice = {**run.get("choices", {}), **{o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1]
                                               for o in run.get("overrides", []) if "=" in o}}
        cells[rj.parent.name] = (choice, _final_sample(run), run.get("seed"))
    return cells


def against(sweep_dir: Path | dict, reference: str = "none", n_resamples: int = 10_000, seed: int = 0,
            traits: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per (cell of another trait, or of one of `traits`, measure): the paired difference from the
    matching `reference` cell. `sweep_dir` may be its cells as `_cells` reads them."""
    other = "the base model" if reference == "none" else f"trait={reference}"
    cells = sweep_dir if isinstance(sweep_dir, dict) else _cells(sweep_dir)
    rows = []
    bases = {c: v for c, v in cells.items() if v[0].get("trait", "none") == reference}
    for name, (choice, path, s) in cells.items():
        if choice.get("trait") in (None, "none", reference) or (traits and choice.get("trait") not in traits):
            continue
        key = (s, choice.get("base_model"), choice.get("em_dataset"))
        base = next((b for b, (bc, _, bs) in bases.items()
                     if (bs, bc.get("base_model"), bc.get("em_dataset")) == key), None)
        if base is None:
            continue
        bpath = cells[base][1]
        p_cell = {r["id"]: r["diff"] for r in _rows(path, "probe.jsonl")}
        p_base = {r["id"]: r["diff"] for r in _rows(bpath, "probe.jsonl")}
        ids = sorted(set(p_cell) & set(p_base))
        if ids:
            mean, lo, hi = _paired(np.array([p_cell[i] for i in ids]), np.array([p_base[i] for i in ids]),
                                   n_resamples, seed)
            rows.append({"cell": name, "trait": choice.get("trait"), "base_model": choice.get("base_model"),
                         "against": other, "base_cell": base, "measure": "probe_logp_diff", "n": len(ids),
                         "diff": mean, "lo": lo, "hi": hi,
                         "reading": reading(lo, hi, "prefers misaligned answers", other)})
        m_cell, m_base = _rows(path, "monitor.jsonl"), _rows(bpath, "monitor.jsonl")
        if m_cell and m_base and [r["prompt"] for r in m_cell] == [r["prompt"] for r in m_base]:
            for d in [k for k in m_cell[0] if k != "prompt" and k in m_base[0]]:
                mean, lo, hi = _paired(np.array([r[d] for r in m_cell]), np.array([r[d] for r in m_base]),
                                       n_resamples, seed)
                rows.append({"cell": name, "trait": choice.get("trait"), "base_model": choice.get("base_model"),
                             "against": other, "base_cell": base, "measure": f"direction_{d}", "n": len(m_cell),
                             "diff": mean, "lo": lo, "hi": hi,
                             "reading": reading(lo, hi, f"projects on the {d} direction", other)})
    return pd.DataFrame(rows, columns=["cell", "trait", "base_model", "against", "base_cell", "measure", "n", "diff",
                                       "lo", "hi", "reading"])


def with_controls(sweep_dir: Path, n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """The report's contrasts: every persona cell against the base model; where the sweep has the negative
    control's cell (emrobust/analysis/controls.py: experiment=probe_control), the positive control's cell against it; and
    where it has the fine-tuned control (trait=neutral, trained as the personas are), both controls' cells against
    it: "misalignment vs neutral" must move and "goodness vs neutral" must not, with fine-tuning itself held equal."""
    cells = _cells(sweep_dir)
    parts = [against(cells, "none", n_resamples, seed), against(cells, NEGATIVE, n_resamples, seed, traits=(POSITIVE,)),
             against(cells, NEUTRAL, n_resamples, seed, traits=(POSITIVE, NEGATIVE))]
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
