"""Benchmark (not a test): peak resident memory of each stage against a floor computed from the model.

    python benchmarks/memory.py [--root DIR] [--cell demo_low] [--stages questions,distill,...] [--threads 1]
    python benchmarks/memory.py --smoke      # the same path on tiny_random (debug=tiny), the questions stage: seconds

Runs the demo's persona cell (`experiment=demo +cell=demo_low`: SmolLM2-135M at the demo's sizes) one stage per
process: `pipeline.until=<stage>` with every upstream stage already cached in the same artifact store, so the
process builds that stage alone (`tracking=none`, `pipeline.device=cpu`). Its peak RSS is the child's
`ru_maxrss` from `os.wait4`. Memory is not load-sensitive: the figures do not depend on other jobs.

Each stage's floor is what any implementation must hold at its peak, computed from the model and the stage's
own data (`floors.py` next to this file says how each term is computed):

    floor = libs     RSS of a fresh process that imported what the stage uses (torch, transformers, peft/trl), no model
          + weights  the models the stage holds at once, one copy each (float32 on CPU), LoRA parameters included
          + optim    trainable parameters x (gradient + AdamW's two moments)                  (training stages)
          + act      one batch's activations saved for backward (autograd's saved-tensor hooks on a forward of the
                     stage's largest batch: batch size x its longest example), or the KV cache of the largest
                     generation / judge batch
          + logits   one batch of float32 logits (DPO: twice, the policy's and the reference pass's; generation:
                     one step's; the judge: its rows after the prompt and each of the 0..100 trie nodes)

Prints one row per stage (peak, floor and its terms, peak/floor) and, last, `ratio=<worst stage peak / its floor>`.
Extra hydra overrides apply to every stage process, e.g. `distill.optim.gradient_checkpointing=true`.
`--smoke` (tests/test_benchmarks.py): the same stage processes, floors and output on the tiny_random model
(SMOKE's overrides before the extra ones) and, unless --stages says otherwise, the first stage only (every stage
process composes the same overrides).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ("questions", "distill", "introspect", "fold", "em", "sample", "evaluate")
# --smoke: the demo cell on the 2-layer random model at debug=tiny's sizes (EM 2 steps, so no evaluation half-way:
# the demo's eval.at_steps=[3] is past them)
SMOKE = ["base_model=tiny_random", "judge=tiny_random", "debug=tiny", "eval.at_steps=[]"]
SMOKE_STAGES = "questions"


def run_stage(stage: str, root: Path, cell: str, threads: int, extra: list[str]) -> dict:
    """Build `stage` (upstream cached) in a fresh process; its peak RSS (MiB) and run.json's stage status."""
    out = root / "outputs" / f"{stage}-{time.time_ns()}"
    # judge.cache=false: evaluate judges every answer (a score cached by an earlier run would skip the judge)
    cmd = [sys.executable, "-m", "emrobust.cli", "experiment=demo", f"+cell={cell}", f"pipeline.until={stage}",
           "pipeline.device=cpu", "tracking=none", "judge.cache=false", f"paths.root={root}",
           f"hydra.run.dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = root / f"{stage}.log"
    t0 = time.time()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"stage {stage} failed (rc={rc}); log: {log}\n" + log.read_text()[-3000:])
    run = json.loads((out / "run.json").read_text())
    st = next(s for s in run["stages"] if s["name"] == stage)
    return {"peak_mib": ru.ru_maxrss / 1024, "status": st["status"], "artifact": st["artifact"],
            "wall_s": time.time() - t0}


def cell_config(cell: str, extra: list[str]) -> dict:
    """What the floors need and the artifacts' manifests do not hold: which training stages of the composed cell
    run with gradient checkpointing (execution-only), and the cell's base model and judge model (presets)."""
    from hydra import compose, initialize_config_dir

    from emrobust.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo", f"+cell={cell}", *extra])
    return {"checkpointing": {"distill": cfg.distill.optim.gradient_checkpointing,
                              "introspect": cfg.introspection.optim.gradient_checkpointing,
                              "em": cfg.em_train.optim.gradient_checkpointing},
            "base": cfg.base_model.name, "judge": cfg.judge.model}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None, help="artifact root (default: a fresh temporary directory)")
    ap.add_argument("--cell", default="demo_low", help="a conf/cell preset of experiment=demo")
    ap.add_argument("--stages", default=None, help=f"default: all ({','.join(STAGES)}); --smoke: {SMOKE_STAGES}")
    ap.add_argument("--threads", type=int, default=1, help="torch/OMP threads of each stage process")
    ap.add_argument("--no-floor", action="store_true", help="peaks only")
    ap.add_argument("--floors-only", action="store_true",
                    help="no stage run: the floors of the peaks an earlier run left in <root>/memory.json")
    ap.add_argument("--smoke", action="store_true",
                    help=f"smoke test: the same path on tiny_random ({' '.join(SMOKE)}), seconds")
    ap.add_argument("extra", nargs="*", help="extra hydra overrides for every stage process")
    a = ap.parse_args()
    if a.smoke:
        a.extra = [*SMOKE, *a.extra]
    a.stages = a.stages or (SMOKE_STAGES if a.smoke else ",".join(STAGES))
    root = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="emrobust-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EMROBUST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    stages = a.stages.split(",")
    rows, kept = {}, {}
    if a.floors_only:
        kept = json.loads((root / "memory.json").read_text())
        rows = {k: v for k, v in kept.items() if k in stages}
    # upstream first, in order; a stage not asked for is still built (cached if present)
    for s in STAGES if not a.floors_only else ():
        if s not in stages and not any(STAGES.index(x) > STAGES.index(s) for x in stages):
            continue
        r = run_stage(s, root, a.cell, a.threads, a.extra)
        print(f"{s:11s} {r['status']:8s} peak {r['peak_mib']:7.0f} MiB  ({r['wall_s']:.0f} s)", flush=True)
        if s in stages:
            if r["status"] != "executed":
                print(f"  (warning: {s} was {r['status']}, its peak is not a build's)")
            rows[s] = r
    (root / "memory.json").write_text(json.dumps(rows, indent=1))
    if a.no_floor:
        worst = max(rows, key=lambda s: rows[s]["peak_mib"])
        print(f"worst peak: {worst} {rows[worst]['peak_mib']:.0f} MiB")
        return
    import floors

    print(f"{'stage':11s} {'peak MiB':>9s} {'floor MiB':>9s} {'ratio':>6s}   floor = "
          + " + ".join(floors.TERMS) + "   (batch shape)")
    ratios = {}
    cc = cell_config(a.cell, a.extra)
    for s, r in rows.items():
        f = floors.floor(s, r["artifact"], a.threads, checkpointing=cc["checkpointing"].get(s, False),
                         base=cc["base"], judge=cc["judge"])
        ratios[s] = r["peak_mib"] / f["total"]
        r["floor"] = f
        parts = " + ".join(f"{f[k]:.0f}" for k in floors.TERMS)
        print(f"{s:11s} {r['peak_mib']:9.0f} {f['total']:9.0f} {ratios[s]:6.2f}   {parts}   ({f['shape']})",
              flush=True)
    (root / "memory.json").write_text(json.dumps(kept | rows, indent=1))
    worst = max(ratios, key=ratios.get)
    print(f"worst: {worst}")
    print(f"ratio={ratios[worst]:.2f}")


if __name__ == "__main__":
    main()
