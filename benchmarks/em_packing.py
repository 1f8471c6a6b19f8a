"""EM-stage SFT throughput with and without padding-free / packing (`em_train.packing`), side by side.

    OMP_NUM_THREADS=1 python benchmarks/em_packing.py [--examples 32] [--batch 4] [--max-length 1024] [--rounds 2]
    python benchmarks/em_packing.py --smoke   # the same runs on tiny_random, 2 examples, batch 2, 1 round

Runs the real em stage (pipeline.until=em, trait=none, em_dataset=insecure from $EMROBUST_DATA_MIRROR, SmolLM2-135M,
Betley's LoRA, CPU) over the same examples for one epoch in each layout, each in a fresh artifacts dir:
  none          padded batches (the default)
  padding_free  each batch flattened into one row with position_ids: same batches, same steps, no pad tokens
  bfd           TRL packing (best-fit decreasing into rows of max_length tokens): fewer, fuller steps
and prints per layout the trainer's own train_runtime (model loading excluded), optimizer steps, s/step and
trained tokens/s (TRL's num_tokens: real tokens, pads excluded; equal in all layouts). With --rounds > 1 the layouts
alternate and each keeps its fastest round (the machine is shared). Last line: ratio = tokens/s with
`--mode` (padding_free by default) / tokens/s padded. `--smoke` (tests/test_benchmarks.py): base_model=tiny_random,
2 examples (one step), batch 2, 1 round (max_length stays 1024: shorter rows would drop most insecure examples).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = ("none", "padding_free", "bfd")


def run_mode(mode: str, a) -> dict:
    from hydra import compose, initialize_config_dir

    from emrobust.engine import pipeline

    tmp = Path(tempfile.mkdtemp(prefix=f"em_packing_{mode}_"))
    overrides = [
        f"base_model={a.base_model}", "trait=none", "em_dataset=insecure", f"em_dataset.n_examples={a.examples}",
        "em_train=betley", f"em_train.packing={mode}", f"em_train.optim.per_device_train_batch_size={a.batch}",
        "em_train.optim.gradient_accumulation_steps=1", f"em_train.optim.max_length={a.max_length}",
        "em_train.optim.max_steps=-1", "em_train.optim.num_train_epochs=1", "em_train.optim.warmup_steps=0",
        "pipeline.until=em", "pipeline.device=cpu", "tracking=none", f"paths.root={tmp}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    try:
        s = pipeline.run_cell(cfg, tmp / "run", overrides)
        em = next(x for x in s["stages"] if x["name"] == "em")
        log = json.loads((Path(em["artifact"]) / "train_log.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    end = next(h for h in log if "train_runtime" in h)
    steps = [h for h in log if "loss" in h]
    tokens = int(max(h.get("num_tokens", 0) for h in log))
    return {"mode": mode, "runtime": end["train_runtime"], "steps": len(steps), "tokens": tokens,
            "tok_s": tokens / end["train_runtime"], "s_step": end["train_runtime"] / max(1, len(steps)),
            "first_loss": steps[0]["loss"], "mean_loss": sum(h["loss"] for h in steps) / len(steps)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", choices=MODES[1:], default="padding_free", help="the layout in the ratio line")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--base-model", default="smollm2_135m")
    ap.add_argument("--smoke", action="store_true",
                    help="smoke test: tiny_random, 2 examples, batch 2, 1 round (seconds)")
    a = ap.parse_args()
    if a.smoke:
        a.base_model, a.examples, a.batch, a.rounds = "tiny_random", 2, 2, 1
    import torch

    from emrobust.config import register

    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("EMROBUST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("WANDB_MODE", "disabled")
    register()
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            res = run_mode(mode, a)
            print(f"round {r} {mode:<13} {res['runtime']:7.1f} s  {res['steps']:3d} steps  {res['tok_s']:7.1f} tok/s",
                  flush=True)
            if mode not in best or res["runtime"] < best[mode]["runtime"]:
                best[mode] = res
    print(f"\nem stage SFT, {a.base_model}, em_train=betley LoRA, insecure x {a.examples} examples, batch {a.batch}, "
          f"max_length {a.max_length}, 1 epoch, {torch.get_num_threads()} torch thread(s), CPU, best of {a.rounds}")
    print(f"{'layout':<13} {'runtime s':>9} {'steps':>5} {'s/step':>7} {'tokens':>6} {'tok/s':>7} {'first loss':>10} "
          f"{'mean loss':>9}")
    for mode in MODES:
        b = best[mode]
        print(f"{mode:<13} {b['runtime']:9.1f} {b['steps']:5d} {b['s_step']:7.2f} {b['tokens']:6d} {b['tok_s']:7.1f} "
              f"{b['first_loss']:10.4f} {b['mean_loss']:9.4f}")
    base = best["none"]["tok_s"]
    for mode in MODES[1:]:
        print(f"{mode} / none tokens/s: {best[mode]['tok_s'] / base:.2f}")
    print(f"ratio={best[a.mode]['tok_s'] / base:.2f}")


if __name__ == "__main__":
    main()
