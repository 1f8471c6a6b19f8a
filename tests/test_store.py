"""The content-addressed artifact store: build once, cache, crash safety, cross-process locking."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import small_filesystem

from emrobust.core.store import COMPLETE, MANIFEST, Store, stable_hash

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---------------------------------------------------------------- build once, then cached
def test_build_once_then_cached(tmp_path):
    store = Store(tmp_path / "art")
    calls = []

    def build(out: Path) -> dict:
        calls.append(out)
        (out / "a.txt").write_text("hello")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
        return {"extra_field": 7}

    r1 = store.get_or_build("stage1", "k1", build, meta={"cell": "x"})
    assert r1.status == "executed"
    assert len(calls) == 1
    assert calls[0].name == ".k1.partial"  # built in the partial dir, not in place
    assert r1.path == tmp_path / "art" / "stage1" / "k1"
    assert (r1.path / COMPLETE).exists() and store.is_complete("stage1", "k1")
    assert not (r1.path.parent / ".k1.partial").exists()

    m = r1.manifest
    assert m["stage"] == "stage1" and m["key"] == "k1"
    assert m["extra_field"] == 7 and m["cell"] == "x"
    assert {"torch", "transformers", "trl", "peft"} <= set(m["versions"])
    from importlib.metadata import version

    for lib in ("torch", "transformers", "trl", "peft"):
        assert m["versions"][lib] == version(lib)
    assert isinstance(m["seconds"], (int, float)) and m["seconds"] >= 0
    # files: exactly what build wrote, with correct sha256 (manifest/COMPLETE are written afterwards)
    assert set(m["files"]) == {"a.txt", os.path.join("sub", "b.bin")}
    for rel, digest in m["files"].items():
        assert digest == _sha(r1.path / rel)
    assert m["files"]["a.txt"] == hashlib.sha256(b"hello").hexdigest()
    # manifest on disk matches the returned one
    assert json.loads((r1.path / MANIFEST).read_text()) == m

    r2 = store.get_or_build("stage1", "k1", build)
    assert r2.status == "cached"
    assert len(calls) == 1
    assert r2.path == r1.path
    assert r2.manifest == m
    assert store.manifest("stage1", "k1") == m

    # another key or stage builds independently
    r3 = store.get_or_build("stage1", "k2", build)
    r4 = store.get_or_build("stage2", "k1", build)
    assert r3.status == r4.status == "executed" and len(calls) == 3


def test_failed_build_leaves_nothing_and_rebuilds(tmp_path):
    store = Store(tmp_path)

    def bad(out: Path):
        (out / "stale.txt").write_text("half written")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.get_or_build("s", "key", bad)
    final = store.path("s", "key")
    assert not final.exists()
    assert not store.is_complete("s", "key")

    def good(out: Path):
        (out / "ok.txt").write_text("fine")

    r = store.get_or_build("s", "key", good)
    assert r.status == "executed"
    assert (r.path / "ok.txt").read_text() == "fine"
    assert not (r.path / "stale.txt").exists(), "files of the failed build leaked into the artifact"
    assert set(r.manifest["files"]) == {"ok.txt"}
    assert store.get_or_build("s", "key", bad).status == "cached"


def test_incomplete_final_dir_is_rebuilt(tmp_path):
    store = Store(tmp_path)
    final = store.path("s", "key")
    final.mkdir(parents=True)
    (final / "junk").write_text("x")  # a final dir without COMPLETE is not an artifact
    r = store.get_or_build("s", "key", lambda out: (out / "f").write_text("y") and None)
    assert r.status == "executed"
    assert not (r.path / "junk").exists()
    assert (r.path / "f").read_text() == "y"


# ---------------------------------------------------------------- processes
CONCURRENT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from emrobust.core.store import Store

    root, counter, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():          # start barrier: every process is up before any calls get_or_build
        time.sleep(0.005)

    def build(out):
        with open(counter, "a") as f:
            f.write("built\\n")
        time.sleep(1.0)
        (out / "data.txt").write_text("payload")

    r = Store(root).get_or_build("stage", "shared", build)
    print(json.dumps({"path": str(r.path), "status": r.status}))
    """
)


def test_concurrent_processes_build_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(CONCURRENT)
    counter, go = tmp_path / "counter.txt", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "art"), str(counter), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(4)
    ]
    time.sleep(1.5)  # let every interpreter import and reach the barrier
    go.write_text("")
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=60)
        assert p.returncode == 0, se[-3000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    assert counter.read_text().splitlines() == ["built"], "more than one process ran the build"
    assert len({o["path"] for o in outs}) == 1
    assert sorted(o["status"] for o in outs) == ["cached"] * 3 + ["executed"]
    final = Path(outs[0]["path"])
    assert (final / COMPLETE).exists() and (final / "data.txt").read_text() == "payload"


KILLED = textwrap.dedent(
    """
    import sys, time
    from emrobust.core.store import Store

    def build(out):
        (out / "partial_file.txt").write_text("in progress")
        time.sleep(120)

    Store(sys.argv[1]).get_or_build("stage", "victim", build)
    """
)


def test_sigkill_during_build_leaves_no_artifact(tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(KILLED)
    root = tmp_path / "art"
    partial = root / "stage" / ".victim.partial"
    p = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.time() + 30
        while not (partial / "partial_file.txt").exists():
            assert p.poll() is None, p.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "build never started"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == -signal.SIGKILL
    store = Store(root)
    assert not store.is_complete("stage", "victim")
    assert not store.path("stage", "victim").exists()

    t0 = time.time()
    r = store.get_or_build("stage", "victim", lambda out: (out / "good.txt").write_text("done") and None)
    assert time.time() - t0 < 10, "lock of the killed process was not released"
    assert r.status == "executed"
    assert (r.path / "good.txt").read_text() == "done"
    assert not (r.path / "partial_file.txt").exists()
    assert set(r.manifest["files"]) == {"good.txt"}
    assert not partial.exists()


# ---------------------------------------------------------------- hashing
def test_stable_hash():
    a = {"x": 1, "y": [1, 2, {"p": "q", "r": None}], "z": {"b": 2.5, "a": "s"}}
    b = {"z": {"a": "s", "b": 2.5}, "y": [1, 2, {"r": None, "p": "q"}], "x": 1}
    assert stable_hash(a) == stable_hash(b)
    assert len(stable_hash(a)) == 16 and len(stable_hash(a, n=32)) == 32
    assert stable_hash(a, n=32).startswith(stable_hash(a))
    c = json.loads(json.dumps(a))
    c["z"]["b"] = 2.6
    assert stable_hash(c) != stable_hash(a)
    d = json.loads(json.dumps(a))
    d["y"] = [2, 1, d["y"][2]]  # list order matters
    assert stable_hash(d) != stable_hash(a)
    assert stable_hash({"x": 1}) != stable_hash({"x": "1"})


# ---------------------------------------------------------------- damage, a full disk, kills at every boundary
def _built(store: Store, key: str = "k") -> Path:
    def build(out: Path) -> None:
        (out / "weights.bin").write_bytes(bytes(range(256)) * 40)
        (out / "sub").mkdir()
        (out / "sub" / "notes.txt").write_text("fine")

    return store.get_or_build("s", key, build).path


@pytest.mark.parametrize("harm,named", [
    (lambda p: p.joinpath("weights.bin").write_bytes(b"\xff" + p.joinpath("weights.bin").read_bytes()[1:]),
     "weights.bin: does not match its manifest sha256"),
    (lambda p: p.joinpath("sub", "notes.txt").unlink(), "notes.txt: missing"),
    (lambda p: p.joinpath("stray.txt").write_text("?"), "stray.txt: not in its manifest"),
])
def test_a_damaged_artifact_is_rebuilt_or_an_error_naming_the_file(tmp_path, caplog, harm, named):
    store = Store(tmp_path / "art")
    final = _built(store)
    harm(final)
    with pytest.raises(Exception, match=named) as e:  # on_damage=error: never used, the file named
        Store(tmp_path / "art", on_damage="error").get_or_build("s", "k", lambda out: None)
    assert type(e.value).__name__ == "DamagedArtifact" and "pipeline.on_damage=rebuild" in str(e.value)
    with caplog.at_level("WARNING", logger="emrobust.core.store"):
        r = _rebuilt = Store(tmp_path / "art").get_or_build(
            "s", "k", lambda out: (out / "weights.bin").write_bytes(bytes(range(256)) * 40) and None)
    assert r.status == "executed" and named.split(":")[0] in r.damaged
    assert any(named.split(":")[0] in rec.getMessage() and "rebuilding" in rec.getMessage() for rec in caplog.records)
    assert set(_rebuilt.manifest["files"]) == {"weights.bin"} and not (final / "stray.txt").exists()
    assert Store(tmp_path / "art", on_damage="error").get_or_build("s", "k", lambda out: None).status == "cached"


def test_a_full_disk_leaves_no_artifact_and_a_clear_error(tmp_path):
    """On a 256 KiB tmpfs mounted here (root only): a build that writes 1 MiB fails with NoSpace, the partial
    build is gone (its space freed), no artifact is complete, and the next build fits and completes."""
    with small_filesystem(tmp_path / "small", "256k") as small:
        store = Store(small)
        with pytest.raises(OSError, match="no space left on the device") as e:
            store.get_or_build("s", "big", lambda out: (out / "w.bin").write_bytes(b"x" * (1 << 20)) and None)
        assert type(e.value).__name__ == "NoSpace" and "nothing was kept" in str(e.value)
        assert not store.is_complete("s", "big") and not store.path("s", "big").exists()
        assert not (small / "s" / ".big.partial").exists()
        assert shutil.disk_usage(small).free > 200 * 1024  # the partial build's space is back
        assert store.get_or_build("s", "fits", lambda out: (out / "w.bin").write_bytes(b"x" * 1000) and None
                                  ).status == "executed"


KILL_AT = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path
    from emrobust.core import store as S

    point = sys.argv[2]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "manifest":  # composing the manifest, after the build wrote its files
        S.library_versions = die
    elif point == "complete":  # manifest written, COMPLETE not yet
        real = Path.write_text
        Path.write_text = lambda self, *a, **k: die() if self.name == S.COMPLETE else real(self, *a, **k)
    elif point == "rename":  # COMPLETE written in the partial dir, not renamed into place
        S.os.replace = die
    elif point == "checkpoints":  # renamed into place, the checkpoint dir not yet removed
        real_rm = shutil.rmtree
        S.shutil.rmtree = lambda p, *a, **k: die() if str(p).endswith(".ckpt") else real_rm(p, *a, **k)

    def build(out):
        (out / "data.txt").write_text("payload")
        if point == "build":
            die()

    store = S.Store(sys.argv[1])
    store.checkpoint_dir("stage", "key").mkdir(parents=True, exist_ok=True)  # as a training stage leaves it
    store.get_or_build("stage", "key", build)
    """
)


@pytest.mark.parametrize("point,status", [("build", "executed"), ("manifest", "executed"), ("complete", "executed"),
                                          ("rename", "executed"), ("checkpoints", "cached")])
def test_a_process_killed_at_any_boundary_leaves_a_store_the_next_run_completes(tmp_path, point, status):
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT)
    root = tmp_path / "art"
    p = subprocess.run([sys.executable, str(script), str(root), point], env=_env(), capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    store = Store(root)
    assert store.is_complete("stage", "key") == (status == "cached")
    r = store.get_or_build("stage", "key", lambda out: (out / "data.txt").write_text("payload") and None)
    assert r.status == status and (r.path / "data.txt").read_text() == "payload"
    assert r.manifest["files"] == {"data.txt": hashlib.sha256(b"payload").hexdigest()}
    assert sorted(p.name for p in (root / "stage").iterdir()) == [".key.lock", "key"]  # no partial, no checkpoints
