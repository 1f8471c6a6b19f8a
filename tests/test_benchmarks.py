"""Every script in benchmarks/ runs end to end in its smoke mode (the tiny_random model, the smallest sizes, the
same code path and overrides as the real measurement), so that a renamed config field or a moved function breaks
a test here, not a measurement months later.

The scripts are found with a glob over benchmarks/*.py: a new script without an entry in SMOKE fails
test_smoke_run, unless NOT_SCRIPTS says why it has none. Each smoke run is a subprocess (this checkout first on
PYTHONPATH, the session's model cache, one torch thread) that must exit 0 and print its normal last line.
benchmarks/gpu_check.sh's own smoke test (`--cpu --tiny`, every part, ~2 min) is tests/test_gpu_check.py's, slow.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import CACHE, ROOT, SHARED_DATA

BENCH = ROOT / "benchmarks"
RATIO = r"ratio=\d+(\.\d+)?"
# script -> (its arguments, a regex its last line of stdout must match in full)
SMOKE = {
    # a handful of bad inputs through the CLI: each one an error, none a traceback
    "bad_inputs.py": (["--smoke"], r"5 cases: silent \(exit 0\) 0, tracebacks 0, median seconds to error "
                                   r"\d+\.\d \(.*\)"),
    "demo.py": (["--smoke"], RATIO),
    "em_packing.py": (["--smoke"], RATIO),
    "em_step.py": (["--smoke"], r"loss first/last\s+\d+\.\d+ / \d+\.\d+"),
    "generation.py": (["--smoke"], RATIO),
    "gpu_check.py": (["judge", "--smoke"], r"RESULT judge .* ratio_vs_floor=\d+(\.\d+)? .*"),
    "judge.py": (["--smoke"], RATIO),
    "memory.py": (["--smoke"], RATIO),
    # the plan of `emrobust sweep --dry-run` (no cluster): every unique stage planned exactly once
    "sweep_stages.py": (["--smoke"], r"ratio=1\.00"),
}
# scripts without a smoke run of their own, and why
NOT_SCRIPTS = {
    "floors.py": "a library, not a script: memory.py imports it, and memory.py --smoke computes a floor with it",
}


def scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_SCRIPTS)


def test_exceptions_are_real_files():
    assert set(NOT_SCRIPTS) <= {p.name for p in BENCH.glob("*.py")}, "a NOT_SCRIPTS entry names no file"
    assert not set(NOT_SCRIPTS) & set(SMOKE)


def test_every_smoke_entry_names_a_script():
    assert set(SMOKE) <= set(scripts()), f"SMOKE entries without a script: {set(SMOKE) - set(scripts())}"


@pytest.mark.subprocess
@pytest.mark.parametrize("script", scripts())
def test_smoke_run(script, tmp_path):
    if script not in SMOKE:
        pytest.fail(f"benchmarks/{script} has no smoke run: add it to SMOKE in {__file__} (a `--smoke` mode: "
                    f"tiny_random, the smallest sizes, the same code path), or to NOT_SCRIPTS with the reason")
    args, last = SMOKE[script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "EMROBUST_CACHE": CACHE, "EMROBUST_DATA_MIRROR": str(SHARED_DATA), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "TMPDIR": str(tmp_path)}  # the scripts' temporary roots land in pytest's tmp_path
    for k in ("HYDRA_FULL_ERROR", "SLURM_CONF"):  # as a user runs it; the smoke runs need no cluster
        env.pop(k, None)
    t0 = time.time()
    p = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    secs = time.time() - t0
    out = f"benchmarks/{script} {' '.join(args)} ({secs:.0f} s):\n{p.stdout[-3000:]}\n{p.stderr[-4000:]}"
    assert p.returncode == 0, out
    lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
    assert lines and re.fullmatch(last, lines[-1]), f"last line does not match {last!r}: " + out
