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

from conftest import ROOT, cli, leaks, run_cell, secrets_env

JOB = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=5",
       "hydra.launcher.max_num_timeout=0"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


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


def test_two_cell_sweep_completes_on_slurm(slurm_cluster, root, tiny_path, monkeypatch):
    secret = "sk-fake-0123456789abcdef"  # reaches the jobs by environment only: never in a script, pickle or log
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    named, env = secrets_env()  # and a key in a variable named by each *_api_key_env field of the schema
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sweep = root / "sweep_ok"
    p = cli("-m", "debug=tiny", "trait=none", "seed=0,1", *named, *JOB, f"hydra.sweep.dir={sweep}", tmp=root,
            timeout=900)
    assert "Submitit 'slurm' sweep output dir" in p.stdout + p.stderr
    assert sacct_states(sweep, 2) == {0: "COMPLETED", 1: "COMPLETED"}
    df = pd.read_csv(sweep / "sweep.csv")
    assert list(df["status"]) == ["ok", "ok"] and list(df["seed"]) == [0, 1]
    assert df["mean_aligned"].notna().all() and list(df["executed"]) == [5, 5]  # em, sample/evaluate@start, sample, evaluate
    assert list((sweep / ".submitit").rglob("*_submission.sh")) and list((sweep / ".submitit").rglob("*.pkl"))
    assert not leaks([sweep, root / "artifacts"], [secret, *env.values()])


def test_failed_cell_is_failed_in_sacct_and_sweep_csv(slurm_cluster, root, tiny_path):
    sweep = root / "sweep_fail"
    # max_length=1 passes login-node validation but leaves no assistant token to train on: run_sft raises in the job
    p = cli("-m", "debug=tiny", "trait=none", "em_train.optim.max_length=128,1", *JOB, f"hydra.sweep.dir={sweep}",
            tmp=root, check=False, timeout=900)
    assert p.returncode != 0, p.stdout[-2000:]  # the sweep fails at the end, as with the local launcher...
    assert sacct_states(sweep, 2) == {0: "COMPLETED", 1: "FAILED"}  # ...after the other cell ran
    df = pd.read_csv(sweep / "sweep.csv")
    assert list(df["status"]) == ["ok", "failed"]
    assert df["cached"][0] == 5  # the ok cell is the first sweep's seed=0 cell: built once, reused from the store
    assert "ValueError" in df["error"][1] and "no training example" in df["error"][1]


def test_fake_gpus_set_cuda_visible_devices(slurm_cluster, tmp_path):
    out = tmp_path / "gpu.out"
    job = subprocess.run(["sbatch", "--parsable", "--gpus=2", "--mem=100M", "-o", str(out), "--wrap",
                          "echo CVD=$CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, check=True).stdout
    deadline = time.time() + 180
    while subprocess.run(["squeue", "-h", "-j", job.strip()], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline
        time.sleep(0.2)
    assert out.read_text().strip() == "CVD=0,1"


# ---------------------------------------------------------------- emrobust sweep, requeue, killed cells, ZeRO-2
def sacct_jobs(ids: list[str]) -> dict[str, tuple[str, str]]:
    """JobID -> (JobName, State) for these jobs, from the accounting DB."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,JobName%200,State"],
                         capture_output=True, text=True, check=True).stdout
    return {j: (n, s.split()[0]) for j, n, s in (ln.split("|") for ln in out.splitlines() if ln)}


def ended(ids: list[str]) -> dict | None:
    jobs = sacct_jobs(ids)
    return jobs if len(jobs) == len(ids) and {s for _, s in jobs.values()} <= TERMINAL else None


def wait_for(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.time() + timeout
    while not (v := pred()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return v


def test_sweep_builds_each_shared_stage_once(slurm_cluster, tmp_path, tiny_path):
    """1 trait x 2 diversities x 2 EM datasets: the trait's persona classifier is one job (seedless, shared by
    both personas), each persona (questions -> distill -> fold) is one job after it, built once; the 4 cells wait
    for both (afterok) and find them cached."""
    import collections
    import json
    import uuid

    sweep = tmp_path / f"sweep-{uuid.uuid4().hex[:8]}"
    grid = ["debug=tiny", "introspection=none", "trait=demo", "question_diversity=low,high",
            "em_dataset=demo_insecure,insecure"]
    dry = cli("sweep", "--dry-run", *grid, *JOB, f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    assert "cells: 4" in dry.stdout and "jobs to submit: 7 (3 shared-stage jobs + 4 cell jobs)" in dry.stdout
    # 9 nodes a cell; the classifier is shared by 4 cells, a persona's questions, distill, fold and its evaluation
    # before EM by 2: 1 + 2 x 5 + 4 x 3 = 23 keys
    assert "36 uses of 23 unique stage keys, 0 cached" in dry.stdout and not sweep.exists()

    p = cli("sweep", *grid, *JOB, f"hydra.sweep.dir={sweep}", tmp=tmp_path, timeout=1500)
    plan = json.loads((sweep / "plan.json").read_text())
    ids = [j["slurm_id"] for j in plan["jobs"]]
    # the login node has every result; give slurmdbd a moment to record the last job's end
    jobs = wait_for(lambda: ended(ids), 60, "sacct to show every job ended", 0.5)
    # sbatch submissions of this sweep, counted in Slurm's own accounting: the classifier, one per persona, one per cell
    mine = {j: ns for j, ns in jobs.items() if ns[0].startswith(f"emrobust-{sweep.name}-")}
    assert len(mine) == 7 == len(set(ids)), jobs
    assert sum("-stages-" in n for n, _ in mine.values()) == 3
    assert {s for _, s in mine.values()} == {"COMPLETED"}, mine
    runs = [json.loads(r.read_text()) for r in [*sweep.glob("*/run.json"), *sweep.glob(".stages/*/run.json")]]
    executed = collections.Counter((s["name"], s["key"]) for r in runs for s in r["stages"] if s["status"] == "executed")
    assert len(executed) == plan["unique_stages"] == 23 and set(executed.values()) == {1}  # ratio 1.0
    df = pd.read_csv(sweep / "sweep.csv")
    assert len(df) == 4 and (df["status"] == "ok").all() and (df["cached"] == 6).all() and (df["executed"] == 3).all()
    assert "4 cells ok, 0 failed" in p.stdout

    again = cli("sweep", "--dry-run", *grid, *JOB, f"hydra.sweep.dir={tmp_path / 'again'}", tmp=tmp_path)
    assert "23 cached, 0 to build" in again.stdout and "(0 shared-stage jobs + 4 cell jobs)" in again.stdout


def test_sweep_validates_every_cell_before_submitting(tmp_path):
    """Login-node checks: the first bad cell stops the sweep with its name and field; nothing is submitted
    (no Slurm needed: nothing gets that far)."""
    sweep = tmp_path / "sweep"
    p = cli("sweep", "debug=tiny", "trait=none", "em_dataset.n_examples=8,100000", *JOB, f"hydra.sweep.dir={sweep}",
            tmp=tmp_path, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "cell 1 (debug=tiny trait=none em_dataset.n_examples=100000" in p.stderr and "nothing was submitted" in p.stderr
    assert not sweep.exists()
    p = cli("sweep", "debug=tiny", "trait=none", "base_model=qwen2_5_7b_instruct", *JOB, f"hydra.sweep.dir={sweep}",
            tmp=tmp_path, check=False)
    assert p.returncode == 2 and "7.6B parameters" in p.stderr and "gpus_per_node" in p.stderr, p.stderr[-2000:]
    msweep = tmp_path / "multirun"  # plain -m through the Slurm launcher: validated on the login node too
    p = cli("-m", "debug=tiny", "trait=none", "em_dataset.n_examples=8,100000", *JOB, f"hydra.sweep.dir={msweep}",
            tmp=tmp_path, check=False)
    assert p.returncode != 0 and "cell 1 (" in p.stderr and "n_examples=100000" in p.stderr, p.stderr[-2000:]
    assert not (msweep / ".submitit").exists()
    # the `-m` launcher passes the same gates as `emrobust sweep` (emrobust.sweeps.sweep.check): an untrusted judge
    p = cli("-m", "debug=tiny", "trait=none", "seed=0,1", "judge.allow_untrusted=false", *JOB,
            f"hydra.sweep.dir={msweep}", tmp=tmp_path, check=False)
    assert p.returncode != 0 and "a judge is below the bar" in p.stderr and "uncalibrated" in p.stderr, p.stderr[-2000:]
    assert "nothing was submitted" in p.stderr and not (msweep / ".submitit").exists()
    env_secret = "sk-test-0123456789"
    p = cli("sweep", "debug=tiny", "trait=none", *JOB, f"hydra.launcher.setup=['export OPENAI_API_KEY={env_secret}']",
            f"hydra.sweep.dir={sweep}", tmp=tmp_path, check=False)
    assert p.returncode == 2 and "hydra.launcher.setup" in p.stderr and env_secret not in p.stderr + p.stdout
    assert not sweep.exists()


RESUME = ["debug=tiny", "trait=none", "pipeline.until=em", "em_dataset.n_examples=40", "em_train.optim.max_steps=40",
          "em_train.optim.save_steps=5"]  # 40 tiny steps ~ 10 s: the signal sent at checkpoint-5 lands mid-training


def test_requeued_training_resumes_from_checkpoint(slurm_cluster, tmp_path, tiny_path):
    """USR2 (what Slurm sends before a time limit or preemption) mid-training: submitit requeues the job, the
    rerun resumes from the newest complete checkpoint, and the adapter is byte-identical to an uninterrupted run."""
    import json
    import signal

    from emrobust.core.store import file_sha256

    # the uninterrupted reference in this process (torch already imported: no second interpreter to start)
    run_cell(tmp_path, *RESUME, f"paths.artifacts={tmp_path / 'reference'}", out="ref_out")
    ref = next((tmp_path / "reference" / "em").glob("*/adapter/adapter_model.safetensors"))

    sweep = tmp_path / "sweep"
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    job = [j if "max_num_timeout" not in j else "hydra.launcher.max_num_timeout=3" for j in JOB]
    proc = subprocess.Popen([os.sys.executable, "-m", "emrobust.cli", "-m", *RESUME, *job, f"hydra.sweep.dir={sweep}"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        art = tmp_path / "artifacts" / "em"
        wait_for(lambda: list(art.glob(".*.ckpt/checkpoint-5/.complete")), 600, "checkpoint-5", 0.1)
        jid = wait_for(lambda: subprocess.run(["squeue", "-h", "-o", "%i", "-n", "emrobust"], capture_output=True,
                                              text=True).stdout.split(), 30, "the job in squeue")[0]
        subprocess.run(["scancel", "--signal=USR2", jid], check=True)
        # Slurm holds a requeued batch job ~2 min (BeginTime); let it start now
        wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-o", "%T", "-j", jid], capture_output=True,
                                                     text=True).stdout, 120, "the requeue", 0.2)
        subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "resuming from" in logs
    manifest = json.loads(next(art.glob("*/manifest.json")).read_text())
    assert 5 <= manifest["train"]["resumed_from_step"] < 40 and manifest["train"]["steps"] == 40
    assert file_sha256(next(art.glob("*/adapter/adapter_model.safetensors"))) == file_sha256(ref)
    assert not list(art.glob(".*.ckpt"))  # checkpoints are gone once the artifact is complete


def test_cell_killed_by_slurm_is_failed_in_sweep_csv(slurm_cluster, tmp_path, tiny_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([os.sys.executable, "-m", "emrobust.cli", "-m", *RESUME[:-1], "em_train.optim.max_steps=5000",
                             *JOB, "hydra.launcher.name=emr-kill", f"hydra.sweep.dir={sweep}"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jid = wait_for(lambda: subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i", "-n", "emr-kill"],
                                          capture_output=True, text=True).stdout.split(), 120, "the job running", 0.2)[0]
    subprocess.run(["scancel", jid], check=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    df = pd.read_csv(sweep / "sweep.csv")
    assert list(df["status"]) == ["failed"] and "CANCELLED" in df["error"][0], df.to_dict()


def test_zero2_two_task_job_matches_single_process(slurm_cluster, tmp_path, tiny_path):
    """A 2-task Slurm job: torch.distributed (gloo) from the Slurm environment, DeepSpeed ZeRO-2 LoRA SFT of
    tiny_random; rank 0 alone writes; the adapter has the single-process run's tensors and shapes."""
    import json

    from safetensors.torch import load_file

    pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed (make install installs it)")
    cell = ["debug=tiny", "trait=none", "pipeline.until=em"]
    # the single-process reference in this process (torch already imported: no second interpreter to start)
    run_cell(tmp_path, *cell, f"paths.artifacts={tmp_path / 'single'}", out="single_out")
    sweep = tmp_path / "sweep"
    cli("-m", *cell, "deepspeed=zero2", *JOB, "hydra/launcher=slurm_multigpu", "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=6", "hydra.launcher.timeout_min=15",
        f"hydra.sweep.dir={sweep}", tmp=tmp_path, timeout=1200)
    logs = {p.name: p.read_text() for p in (sweep / ".submitit").rglob("*_log.*")}
    text = "".join(logs.values())
    assert "rank 0/2 joined the process group (gloo" in text and "rank 1/2 joined the process group (gloo" in text
    script = next((sweep / ".submitit").rglob("*_submission.sh")).read_text()
    assert "--kill-on-bad-exit=1" in script  # a dead rank ends the job instead of leaving the others waiting
    single = next((tmp_path / "single" / "em").glob("*/"))
    multi = list((tmp_path / "artifacts" / "em").glob("*/"))
    assert len(multi) == 1 and multi[0].name == single.name  # the same stage key: execution details are not in it
    m = json.loads((multi[0] / "manifest.json").read_text())
    assert m["train"]["world_size"] == 2 and m["train"]["deepspeed_zero_stage"] == 2
    a = load_file(multi[0] / "adapter" / "adapter_model.safetensors")
    b = load_file(single / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    run = json.loads((sweep / "0" / "run.json").read_text())
    assert run["status"] == "ok" and run["world_size"] == 2


def test_sweep_dry_run_of_the_study_preset(tmp_path):
    """experiment=diversity_sweep through the planner: the preset's sweeper params expand as with -m (5 cell kinds
    x 4 EM datasets x 3 seeds); each persona (per diversity level and seed) is one shared job for its 4 EM cells;
    its contrasts pair over 3 seeds x 4 EM datasets; the pinned base model is listed to fetch."""
    no_slurm = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"SLURM_CONF": str(tmp_path / "none")}
    p = cli("sweep", "--dry-run", "experiment=diversity_sweep", "hydra/launcher=slurm", tmp=tmp_path, timeout=600,
            env=no_slurm)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Slurm: not reachable from here" in p.stdout and "was not checked" in p.stdout
    assert "cells: 60" in p.stdout and "jobs to submit: 83 (23 shared-stage jobs + 60 cell jobs)" in p.stdout
    assert "high vs low diversity: 12 pairs" in p.stdout
    assert "model qwen2_5_7b_instruct: Qwen/Qwen2.5-7B-Instruct@a09a35458c70" in p.stdout
    assert "GPU-hours requested" in p.stdout and not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- requests no node can run, emrobust status
def _user(**extra) -> dict:
    """The environment a user runs emrobust in (no HYDRA_FULL_ERROR: errors are one line)."""
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG")} | extra


def test_a_request_no_node_can_run_is_refused_before_submitting(slurm_cluster, tmp_path):
    """The preset's request (8 CPUs, 64 GB, 1 GPU) on a 2-CPU, ~23 GB node with 2 fake GPUs: refused on the login
    node in one line naming the fields, nothing submitted; --dry-run prints the plan, then the refusal; a request
    that fits is reported as checked."""
    sweep = tmp_path / "sweep"
    cell = ["debug=tiny", "trait=none", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"]
    p = cli("sweep", *cell, tmp=tmp_path, check=False, env=_user())
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert err[0].startswith("emrobust: error: hydra.launcher: no node of partition debug (1 node(s)) can run this "
                             "job, it would pend forever: 8 CPUs per node") and "mem_gb=64 > 23." in err[0], err
    assert err[1].strip().startswith("hint: hydra.launcher.cpus_per_task=2 hydra.launcher.mem_gb=") and \
        "nothing was submitted" in err[1]
    assert not sweep.exists()
    p = cli("sweep", "--dry-run", *cell, tmp=tmp_path, check=False, env=_user())
    # the dry-run reports the refusal as a gate and exits 0 (the real submission above refused)
    assert p.returncode == 0 and "jobs to submit: 1" in p.stdout, p.stdout + p.stderr
    assert "slurm gate: REFUSED: " in p.stdout and "8 CPUs per node" in p.stdout
    p = cli("sweep", "--dry-run", *cell, *JOB[1:], tmp=tmp_path, env=_user())
    assert "Slurm: the request (1 CPU, 3 GB, 0 GPU, 5 min, 1 node(s)) fits 1 node(s) of partition debug" in p.stdout
    cases = {"hydra.launcher.gpus_per_node=4": ("hydra.launcher.gpus_per_node", "4 GPU(s) per node > 2, the most a node has"),
             "hydra.launcher.partition=gpu": ("hydra.launcher.partition", "partition 'gpu' does not exist"),
             "hydra.launcher.partition=emr_short": ("hydra.launcher.timeout_min",
                                                    "timeout_min=10 > 5 min, the partition's time limit")}
    subprocess.run(["scontrol", "create", "PartitionName=emr_short", "Nodes=ALL", "MaxTime=5"], check=True)
    try:
        for n, (override, (field, text)) in enumerate(cases.items()):
            msweep = tmp_path / f"m{n}"  # plain -m through the Slurm launcher too
            p = cli("-m", "debug=tiny", "trait=none", *JOB, "hydra.launcher.timeout_min=10", override,
                    f"hydra.sweep.dir={msweep}", tmp=tmp_path, check=False, env=_user())
            assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
            line = next(ln for ln in p.stderr.splitlines() if ln.startswith("emrobust: error:"))
            assert line.startswith(f"emrobust: error: {field}: ") and text in line, line
            assert not (msweep / ".submitit").exists()
    finally:
        subprocess.run(["scontrol", "delete", "PartitionName=emr_short"], check=True)


def test_status_shows_pending_running_done_and_failed(slurm_cluster, tmp_path, tiny_path):
    """Two cells each asking for both CPUs: one runs while the other pends (Resources); the second fails in its em
    stage. `emrobust status` says so along the way, and at the end: done, and failed with the reason and the log."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([os.sys.executable, "-m", "emrobust.cli", "-m", "debug=tiny", "trait=none",
                             "em_train.optim.max_length=128,1", *JOB, "hydra.launcher.cpus_per_task=2",
                             f"hydra.sweep.dir={sweep}"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            if (sweep / "slurm_jobs.json").exists():
                out = cli("status", str(sweep), tmp=tmp_path).stdout
                for ln in out.splitlines()[1:]:
                    if "pending" in ln and "PENDING (" in ln:
                        seen.add("pending")
                    if "running" in ln and "stage " in ln and "elapsed" in ln:
                        seen.add("running")
            time.sleep(0.5)
    finally:
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0  # cell 1 failed
    assert seen == {"pending", "running"}, (seen, out[-2000:])
    final = cli("status", "--watch", "--interval", "1", str(sweep), tmp=tmp_path).stdout.splitlines()
    assert "1 done, 1 failed" in final[0], "\n".join(final)  # the cells' lines say why when it is not
    assert final[1].split()[:2] == ["cell:0", "done"] and "5 stages executed" in final[1]
    assert final[2].split()[:2] == ["cell:1", "failed"] and "stage em: ValueError: no training example" in final[2]
    assert "log: " + str(sweep / ".submitit") in final[2] and final[2].endswith("_0_log.err")


def test_two_sweeps_sharing_a_store_build_each_key_once(slurm_cluster, tmp_path, tiny_path):
    """Two -m sweeps at once on one store (seeds 0,1 and 1,2, until em): the seed-1 cells of both race for the same
    key; each key is executed once over both sweeps (the other job waits on the store's lock, finds it cached)."""
    import collections
    import json

    env = {**os.environ, "EMROBUST_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    procs = [subprocess.Popen([os.sys.executable, "-m", "emrobust.cli", "-m", "debug=tiny", "trait=none",
                               "pipeline.until=em", f"seed={seeds}", *JOB, f"hydra.sweep.dir={tmp_path / name}"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, seeds in (("a", "0,1"), ("b", "1,2"))]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    runs = [json.loads(r.read_text()) for r in tmp_path.glob("[ab]/*/run.json")]
    assert len(runs) == 4 and {r["status"] for r in runs} == {"ok"}
    executed = collections.Counter((s["name"], s["key"]) for r in runs for s in r["stages"] if s["status"] == "executed")
    keys = {(s["name"], s["key"]) for r in runs for s in r["stages"] if s["key"]}
    assert len(keys) == 3 and set(executed) == keys and set(executed.values()) == {1}, executed
    assert sum(s["status"] == "cached" for r in runs for s in r["stages"]) == 1  # the seed-1 em of the other sweep
