"""Sweeps through `hydra/launcher=slurm` on a real single-node Slurm cluster (slurm/start-local-cluster.sh).

The session fixture installs (apt, first time only) and starts the cluster; it skips only when not root or when
apt is unavailable. Each cell is a small job: 1 CPU, 3 GB, 5 minutes.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, cli

START = ROOT / "slurm" / "start-local-cluster.sh"
STOP = ROOT / "slurm" / "stop-local-cluster.sh"
JOB = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=5",
       "hydra.launcher.max_num_timeout=0"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    p = subprocess.run([str(START), "--gpus", "2"], capture_output=True, text=True, timeout=1200)
    if p.returncode in (77, 78):  # not root / no apt-get to install the packages
        pytest.skip(p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0, f"start-local-cluster.sh failed:\n{p.stdout}\n{p.stderr[-5000:]}"
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("export SLURM_CONF="), last
    conf = last.split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if "already running" not in p.stderr:  # leave a cluster we found running as it was
        subprocess.run([str(STOP)], capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One artifacts root for the module, so the second sweep's ok cell reuses the first sweep's stages."""
    return tmp_path_factory.mktemp("slurm")


def sacct_states(sweep: Path, n: int, timeout: float = 120) -> dict[int, str]:
    """Slurm's final state of each array task (= Hydra job number) of the sweep, from the accounting DB."""
    ids = sorted(d.name for d in (sweep / ".submitit").iterdir() if d.is_dir() and "_" in d.name)
    assert len(ids) == n, ids
    array = ids[0].split("_")[0]
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", array, "-o", "JobID,State"], capture_output=True,
                             text=True, check=True).stdout
        states = {int(j.split("_")[1]): s.split()[0] for j, s in (ln.split("|") for ln in out.split()) if "_" in j}
        if len(states) == n and set(states.values()) <= TERMINAL:
            return states
        assert time.time() < deadline, f"jobs not finished in sacct: {out}"
        time.sleep(1)


def test_two_cell_sweep_completes_on_slurm(slurm_cluster, root, tiny_path):
    sweep = root / "sweep_ok"
    p = cli("-m", "debug=tiny", "trait=none", "seed=0,1", *JOB, f"hydra.sweep.dir={sweep}", tmp=root, timeout=900)
    assert "Submitit 'slurm' sweep output dir" in p.stdout + p.stderr
    assert sacct_states(sweep, 2) == {0: "COMPLETED", 1: "COMPLETED"}
    df = pd.read_csv(sweep / "sweep.csv")
    assert list(df["status"]) == ["ok", "ok"] and list(df["seed"]) == [0, 1]
    assert df["mean_aligned"].notna().all() and list(df["executed"]) == [2, 2]  # em + evaluate, per seed


def test_failed_cell_is_failed_in_sacct_and_sweep_csv(slurm_cluster, root, tiny_path):
    sweep = root / "sweep_fail"
    p = cli("-m", "debug=tiny", "trait=none", "em_dataset.n_examples=8,100000", *JOB, f"hydra.sweep.dir={sweep}",
            tmp=root, check=False, timeout=900)
    assert p.returncode != 0, p.stdout[-2000:]  # the sweep fails at the end, as with the local launcher...
    assert sacct_states(sweep, 2) == {0: "COMPLETED", 1: "FAILED"}  # ...after the other cell ran
    df = pd.read_csv(sweep / "sweep.csv")
    assert list(df["status"]) == ["ok", "failed"]
    assert df["cached"][0] == 2  # the ok cell is the first sweep's seed=0 cell: built once, reused from the store
    assert "ConfigError" in df["error"][1] and "n_examples=100000" in df["error"][1]


def test_fake_gpus_set_cuda_visible_devices(slurm_cluster, tmp_path):
    out = tmp_path / "gpu.out"
    job = subprocess.run(["sbatch", "--parsable", "--gpus=2", "--mem=100M", "-o", str(out), "--wrap",
                          "echo CVD=$CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, check=True).stdout
    deadline = time.time() + 60
    while subprocess.run(["squeue", "-h", "-j", job.strip()], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline
        time.sleep(0.2)
    assert out.read_text().strip() == "CVD=0,1"
