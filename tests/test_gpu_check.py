"""benchmarks/gpu_check.sh: bash-clean, and its CPU smoke mode (--cpu --tiny) runs every part end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import CACHE, ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_cpu_tiny_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "EMROBUST_CACHE": CACHE, "PY": sys.executable}
    p = subprocess.run(["bash", str(SCRIPT), "--cpu", "--tiny"], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    res = {line.split()[1]: dict(kv.split("=", 1) for kv in line.split()[2:]) for line in summary.splitlines()}
    assert set(res) == {"convert", "cell", "generate", "judge", "sft", "dpo", "vllm"}
    assert res["cell"]["status"] == "ok" and "s_evaluate" in res["cell"] and "s_sample" in res["cell"]
    assert float(res["generate"]["hf_tok_s"]) > 0 and float(res["generate"]["generate_tok_s"]) > 0
    assert float(res["judge"]["answers_s"]) > 0 and float(res["judge"]["ratio_vs_floor"]) > 0
    assert float(res["sft"]["tok_s"]) > 0 and res["sft"]["mfu"] == "n/a"  # no MFU without a GPU peak
    assert float(res["dpo"]["step_s"]) > 0
    assert res["vllm"]["status"] == "skipped"
