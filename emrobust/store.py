"""Content-addressed artifacts: the one place that decides what is cached.

An artifact lives at ``<root>/<stage>/<key>/`` and is complete iff it holds ``COMPLETE``. It is built in
``<root>/<stage>/.<key>.partial/`` under an exclusive file lock, then renamed into place, so a crash never
leaves a completed artifact and concurrent processes that need the same key build it once (the others
wait on the lock and reuse it).

Training stages checkpoint into ``<root>/<stage>/.<key>.ckpt/`` (``checkpoint_dir``), which outlives a killed
build (preemption, timeout, requeue) so the next build of the same key resumes from it; it is deleted once the
artifact is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

COMPLETE = "COMPLETE"
MANIFEST = "manifest.json"


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "emrobust"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "n/a"
    return out


@dataclass
class Result:
    path: Path
    key: str
    status: str  # executed | cached
    seconds: float
    manifest: dict


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_complete(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / COMPLETE).exists()

    def manifest(self, stage: str, key: str) -> dict:
        return json.loads((self.path(stage, key) / MANIFEST).read_text())

    def checkpoint_dir(self, stage: str, key: str) -> Path:
        """Where a build of (stage, key) keeps resumable training checkpoints (kept across killed builds)."""
        return self.root / stage / f".{key}.ckpt"

    def get_or_build(
        self, stage: str, key: str, build: Callable[[Path], dict | None], meta: dict | None = None,
        decided: Callable[[str], None] | None = None,
    ) -> Result:
        """Return the artifact for (stage, key), building it with ``build(tmp_dir)`` if missing.

        ``build`` writes files into the directory it is given and may return extra manifest fields.
        ``decided("cached"|"build")`` is called once the outcome is known (for a build: under the lock, before
        ``build`` starts), e.g. to tell the other ranks of a multi-process job whether to join the build.
        """
        decided = decided or (lambda status: None)
        final = self.path(stage, key)
        if (final / COMPLETE).exists():
            decided("cached")
            return Result(final, key, "cached", 0.0, self.manifest(stage, key))
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final.parent / f".{key}.lock")):
            if (final / COMPLETE).exists():  # another process built it while we waited
                decided("cached")
                return Result(final, key, "cached", 0.0, self.manifest(stage, key))
            decided("build")
            tmp = final.parent / f".{key}.partial"
            if tmp.exists():  # a crashed build: nothing in it is trusted
                shutil.rmtree(tmp)
            if final.exists():  # an incomplete final dir can only come from outside tampering
                shutil.rmtree(final)
            tmp.mkdir(parents=True)
            t0 = time.time()
            extra = build(tmp) or {}
            seconds = time.time() - t0
            manifest = {
                "stage": stage,
                "key": key,
                **(meta or {}),
                **extra,
                "versions": library_versions(),
                "host": socket.gethostname(),
                "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": {
                    str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
                },
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            (tmp / COMPLETE).write_text("")
            os.replace(tmp, final)
            shutil.rmtree(self.checkpoint_dir(stage, key), ignore_errors=True)
            return Result(final, key, "executed", seconds, manifest)
