"""`make demo` wall time and per-stage breakdown, cold (empty artifact store) vs warm (every stage cached).

    .venv/bin/python benchmarks/demo.py [extra hydra overrides...]
    .venv/bin/python benchmarks/demo.py --smoke [extra hydra overrides...]   # tiny_random, one cell: seconds

Runs `emrobust -m experiment=demo` twice in a fresh temporary root (the converted base model in
EMROBUST_CACHE is reused: "after install"), prints the seconds of every stage of every cell from run.json,
and as its last line `ratio=<cold wall / warm wall>` (what the artifact cache saves on a repeated sweep).
`--smoke` (tests/test_benchmarks.py): the same two sweeps with SMOKE's overrides first (the 2-layer random model,
debug=tiny's sizes, only the demo's `+cell=none`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --smoke: debug=tiny's sizes on the 2-layer random model (EM 2 steps, so no evaluation half-way: the demo's
# eval.at_steps=[3] is past them); one of the demo's three cells (the sweeper's +cell, given here)
SMOKE = ["base_model=tiny_random", "judge=tiny_random", "debug=tiny", "eval.at_steps=[]", "+cell=none"]


def sweep(root: Path, name: str, extra: list[str]) -> tuple[float, list[dict]]:
    env = {**os.environ, "EMROBUST_ROOT": str(root)}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "emrobust.cli", "-m", "experiment=demo", f"hydra.sweep.dir={root}/{name}",
                    *extra], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    runs = [json.loads(p.read_text()) for p in sorted((root / name).glob("*/run.json"))]
    return wall, runs


def main() -> None:
    extra = sys.argv[1:]
    if "--smoke" in extra:
        extra = [*SMOKE, *(x for x in extra if x != "--smoke")]
    with tempfile.TemporaryDirectory(prefix="emrobust-demo-") as d:
        root = Path(d)
        cold, runs = sweep(root, "cold", extra)
        print(f"cold sweep: {cold:.1f}s wall, {len(runs)} cells")
        for r in runs:
            cell = " ".join(r["overrides"])
            stages = ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in r["stages"] if s["status"] == "executed")
            print(f"  [{cell}] {r['status']}: {stages}")
        total = {}
        for r in runs:
            for s in r["stages"]:
                total[s["name"]] = total.get(s["name"], 0.0) + s["seconds"]
        print("  per stage, all cells: " + ", ".join(f"{k} {v:.1f}s" for k, v in total.items()))
        warm, runs2 = sweep(root, "warm", extra)
        executed = sum(s["status"] == "executed" for r in runs2 for s in r["stages"])
        print(f"warm sweep: {warm:.1f}s wall, stages executed: {executed}")
        print(f"ratio={cold / warm:.2f}")


if __name__ == "__main__":
    main()
