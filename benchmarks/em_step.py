"""Throughput and peak memory of the em stage on CPU: SmolLM2-135M, batch 4 x 256 tokens, Betley's LoRA.

    python benchmarks/em_step.py [--steps 10] [--threads N]
    python benchmarks/em_step.py --smoke     # the same run on tiny_random, 2 steps: seconds

Runs the real em stage (pipeline.until=em, trait=none, em_dataset=insecure from $EMROBUST_DATA_MIRROR or the
pinned URL) in a fresh artifacts dir, then prints steps/s (the trainer's own train_steps_per_second, model
loading excluded), tokens/s, the stage's wall seconds and the process's peak RSS (resource ru_maxrss); last line
the first and last loss. The examples with no assistant token within max_length are dropped (em_train.max_drop_share=1:
at 256 tokens 8 of the 40 insecure examples, 20%; the stage's default 5% bar refuses the run, 2026-12-05).
`--smoke` (tests/test_benchmarks.py): base_model=tiny_random, 2 steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--em-train", default="betley")
    ap.add_argument("--base-model", default="smollm2_135m")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="smoke test: tiny_random, 2 steps (seconds)")
    a = ap.parse_args()
    if a.smoke:
        a.base_model, a.steps = "tiny_random", 2
    import torch
    from hydra import compose, initialize_config_dir

    from emrobust.engine import pipeline
    from emrobust.config import register

    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("EMROBUST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="em_bench_"))
    overrides = [
        f"base_model={a.base_model}", "trait=none", "em_dataset=insecure", f"em_dataset.n_examples={4 * a.steps}",
        f"em_train={a.em_train}", "em_train.optim.per_device_train_batch_size=4",
        "em_train.optim.gradient_accumulation_steps=1", f"em_train.optim.max_length={a.max_length}",
        f"em_train.optim.max_steps={a.steps}", "em_train.optim.warmup_steps=0", "em_train.max_drop_share=1.0",
        "pipeline.until=em",
        "pipeline.device=cpu", f"paths.root={tmp}",
    ]
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    s = pipeline.run_cell(cfg, tmp / "run", overrides)
    em = next(x for x in s["stages"] if x["name"] == "em")
    m = json.loads((Path(em["artifact"]) / "manifest.json").read_text())
    log = json.loads((Path(em["artifact"]) / "train_log.json").read_text())
    end = next(h for h in log if "train_steps_per_second" in h)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"em stage, {a.base_model}, em_train={a.em_train}, batch 4 x {a.max_length} tokens, "
          f"{m['train']['steps']} steps, "
          f"{torch.get_num_threads()} torch threads, CPU")
    print(f"steps/s            {end['train_steps_per_second']:.3f}")
    print(f"tokens/s (<=)      {end['train_steps_per_second'] * 4 * a.max_length:.0f}")
    print(f"train runtime s    {end['train_runtime']:.1f}")
    print(f"stage wall s       {em['seconds']:.1f}")
    print(f"peak RSS MiB       {peak_mb:.0f}")
    print(f"loss first/last    {m['train']['first_loss']:.3f} / {m['train']['last_loss']:.3f}")


if __name__ == "__main__":
    main()
