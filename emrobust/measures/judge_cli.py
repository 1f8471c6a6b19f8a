"""`emrobust judge calibrate | label export | label import`: how good a judge is, on labelled answers.

    emrobust judge calibrate judge=<name> [reference=<set>] [eval=<set>] [--n N] [other overrides]
    emrobust judge label export <run dir | sweep dir> [--n 100] [--seed 0] [--out labels.csv] [--show-judge]
    emrobust judge label import labels.csv --name NAME        # then: judge calibrate reference=NAME

`calibrate` scores the reference set (default `judge.reference`, the built-in `judge_reference`) with the cell's
judge under the aligned/coherent templates of the cell's eval set, prints the figures and saves them as the
judge's calibration (emrobust/measures/calibration.py). `label export` writes a seeded sample of a run's or sweep's scored
answers to a CSV with empty `aligned`, `coherent` and `stratum` columns to fill by hand (REFUSAL or CODE in
`aligned` for answers a judge should not score); `label import` checks the filled CSV and stores it as a
reference set in the cache.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..core.compose import compose
from ..errors import ConfigError

USAGE = __doc__.split("\n\n")[1]
EXPORT_COLUMNS = ("id", "cell", "question_id", "question", "answer", "aligned", "coherent", "stratum", "note")


def _cache(arg: str | None) -> Path:
    return Path(arg or os.environ.get("EMROBUST_CACHE") or Path.home() / ".cache" / "emrobust").expanduser()


def calibrate(argv: list[str]) -> int:
    # lazy: slow import
    from .calibration import calibrate as run
    from .calibration import format_records

    ap = argparse.ArgumentParser(prog="emrobust judge calibrate", description="score a labelled reference set")
    ap.add_argument("--n", type=int, default=None, help="a seeded subset of the reference (strata kept)")
    ap.add_argument("--n-bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="judge=<name> [reference=<set>] [eval=<set>] [key=value ...]")
    args = ap.parse_args(argv)
    reference = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("reference=")), None)
    overrides = [o for o in args.overrides if not o.startswith("reference=")]
    cfg = compose(overrides)
    reference, n = reference or str(cfg.judge.reference), args.n
    base, sep, tail = reference.rpartition("@n")
    if sep and tail.isdigit():  # a subset's name (judge.reference=judge_reference@n48): that set, that many items
        if n not in (None, int(tail)):
            raise ConfigError(f"reference {reference!r} is a subset of {tail} items, but --n {n}", where="--n")
        reference, n = base, int(tail)
    records = run(cfg, reference, n, args.n_bootstrap, args.seed)
    print(format_records(records))
    return 0


def export(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="emrobust judge label export")
    ap.add_argument("path", type=Path, help="a run dir (run.json) or a sweep dir (*/run.json)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("labels.csv"))
    ap.add_argument("--show-judge", action="store_true", help="include the judge's scores (they anchor a labeller)")
    args = ap.parse_args(argv)
    runs = [args.path / "run.json"] if (args.path / "run.json").exists() else sorted(args.path.glob("*/run.json"))
    rows = []
    for rj in runs:
        run = json.loads(rj.read_text())
        for st in run.get("stages", []):
            if st["name"] == "evaluate" and st.get("artifact") and (Path(st["artifact"]) / "answers.jsonl").exists():
                for line in (Path(st["artifact"]) / "answers.jsonl").read_text().splitlines():
                    r = json.loads(line)
                    rows.append({"cell": rj.parent.name, **r})
    if not rows:
        print(f"emrobust judge label export: no scored answers under {args.path}", file=sys.stderr)
        return 2
    pick = np.random.default_rng(args.seed).permutation(len(rows))[: args.n]
    cols = list(EXPORT_COLUMNS) + (["judge_aligned", "judge_coherent"] if args.show_judge else [])
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for k, i in enumerate(sorted(pick)):
            r = rows[i]
            out = {"id": f"label_{k:04d}", "cell": r["cell"], "question_id": r["question_id"],
                   "question": r["question"], "answer": r["answer"], "aligned": "", "coherent": "", "stratum": "",
                   "note": ""}
            if args.show_judge:
                out |= {"judge_aligned": r.get("aligned"), "judge_coherent": r.get("coherent")}
            w.writerow(out)
    print(f"{len(pick)} answers to label in {args.out}: fill aligned (0-100, or REFUSAL / CODE), coherent (0-100), "
          "optionally stratum; then `emrobust judge label import <csv> --name NAME`")
    return 0


def import_(argv: list[str]) -> int:
    from .calibration import STRATA, _check  # lazy: slow import

    ap = argparse.ArgumentParser(prog="emrobust judge label import")
    ap.add_argument("csv", type=Path)
    ap.add_argument("--name", required=True, help="the reference set's name (judge calibrate reference=NAME)")
    ap.add_argument("--cache", default=None, help="cache root (default $EMROBUST_CACHE)")
    args = ap.parse_args(argv)
    items = []
    try:
        with open(args.csv, newline="") as f:
            for ln, r in enumerate(csv.DictReader(f), 2):
                def score(k, special=()):
                    v = (r.get(k) or "").strip()
                    if v.upper() in special:
                        return None, v.upper()
                    try:
                        x = float(v)
                    except ValueError:
                        raise ConfigError(f"{k}={v!r} is not a number 0-100{' or ' + '/'.join(special) if special else ''}",
                                          file=str(args.csv), where=f"line {ln}") from None
                    return x, None

                aligned, special = score("aligned", ("REFUSAL", "CODE"))
                coherent, _ = score("coherent")
                stratum = (r.get("stratum") or "").strip() or (special.lower() if special else None)
                if stratum not in (None, *STRATA):
                    raise ConfigError(f"stratum={stratum!r}; known: {STRATA}", file=str(args.csv), where=f"line {ln}")
                items.append({"id": r.get("id") or f"line_{ln}", "question": r["question"], "answer": r["answer"],
                              "aligned": aligned, "coherent": coherent, "stratum": stratum, "cell": r.get("cell")})
        _check(items, str(args.csv))
    except ConfigError as e:
        print(f"emrobust judge label import: {e}", file=sys.stderr)
        return 2
    out = _cache(args.cache) / "judge" / "references" / f"{args.name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(it) + "\n" for it in items))
    print(f"{len(items)} labelled answers -> {out}\n(emrobust judge calibrate judge=<name> reference={args.name})")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["calibrate"]:
        return calibrate(argv[1:])
    if argv[:2] == ["label", "export"]:
        return export(argv[2:])
    if argv[:2] == ["label", "import"]:
        return import_(argv[2:])
    print(f"usage:{USAGE}", file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2
