"""Content-addressed artifacts: the one place that decides what is cached.

An artifact lives at ``<root>/<stage>/<key>/`` and is complete iff it holds ``COMPLETE``. It is built in
``<root>/<stage>/.<key>.partial/`` under an exclusive file lock, then renamed into place, so a crash never
leaves a completed artifact and concurrent processes that need the same key build it once (the others
wait on the lock and reuse it).

Training stages checkpoint into ``<root>/<stage>/.<key>.ckpt/`` (``checkpoint_dir``), which outlives a killed
build (preemption, timeout, requeue) so the next build of the same key resumes from it; it is deleted once the
artifact is complete.

Damage: a complete artifact is used only once its files match the sha256s its manifest lists (every use reads
them; nothing missing, nothing added). One that does not is never used silently: by the
`on_damage` setting it is rebuilt (a warning names the file) or it is an error naming the file
(`DamagedArtifact`). A build that fails, a full disk included (`NoSpace`), leaves no completed artifact and no
partial dir behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

COMPLETE = "COMPLETE"
MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class DamagedArtifact(RuntimeError):
    """A complete artifact whose files no longer match its manifest (on_damage=error)."""


class NoSpace(OSError):
    """The disk filled up during a build; nothing of the build was kept."""


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
    damaged: str | None = None  # executed because the cached artifact was damaged: what was wrong


def damage(final: Path) -> str | None:
    """What is wrong with the complete artifact at `final` (a file missing, added, or not matching its manifest
    sha256), or None. Every file is read on every use: bit rot keeps sizes and times, so nothing cheaper would
    see it."""
    try:
        files = json.loads((final / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{final / MANIFEST}: unreadable ({type(e).__name__})"
    for rel, digest in sorted(files.items()):
        p = final / rel
        if not p.is_file():
            return f"{p}: missing (listed in its manifest)"
        if file_sha256(p) != digest:
            return f"{p}: does not match its manifest sha256"
    extra = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()
                   and str(p.relative_to(final)) not in files and p.name not in (MANIFEST, COMPLETE))
    if extra:
        return f"{final / extra[0]}: not in its manifest"
    return None


class Store:
    def __init__(self, root: str | os.PathLike, on_damage: str = "rebuild"):
        """`on_damage`: rebuild | error, for a complete artifact whose files do not match its manifest."""
        self.root = Path(root).expanduser().resolve()
        self.on_damage = str(on_damage)

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
        if (final / COMPLETE).exists() and self._usable(final):
            decided("cached")
            return self._cached(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final.parent / f".{key}.lock")):
            damaged = None
            if (final / COMPLETE).exists():  # another process built it while we waited, or it is damaged
                damaged = damage(final)
                if damaged is None:
                    decided("cached")
                    return self._cached(stage, key)
                if self.on_damage == "error":
                    raise DamagedArtifact(self._damaged(final, damaged))
            decided("build")
            tmp = final.parent / f".{key}.partial"
            if tmp.exists():  # a crashed build: nothing in it is trusted
                shutil.rmtree(tmp)
            if final.exists():  # damaged, or an incomplete final dir (outside tampering): out of the way first
                aside = final.parent / f".{key}.damaged"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
                shutil.rmtree(aside)
            tmp.mkdir(parents=True)
            t0 = time.time()
            try:
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
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)  # nothing of a failed build is kept (a full disk: its space)
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, NoSpace):
                    free = shutil.disk_usage(self.root).free
                    raise NoSpace(e.errno, f"no space left on the device of {self.root} while building {stage} "
                                           f"{key} ({free} bytes free after removing the partial build); nothing "
                                           "was kept: free space, or set paths.artifacts elsewhere, and run again"
                                  ) from e
                raise
            shutil.rmtree(self.checkpoint_dir(stage, key), ignore_errors=True)
            return Result(final, key, "executed", seconds, manifest, damaged)

    def _usable(self, final: Path) -> bool:
        """Is the complete artifact at `final` undamaged? If not: False (on_damage=rebuild, with a warning naming
        the file) or DamagedArtifact (on_damage=error)."""
        problem = damage(final)
        if problem is None:
            return True
        if self.on_damage == "error":
            raise DamagedArtifact(self._damaged(final, problem))
        log.warning("artifact %s is damaged: %s; rebuilding it (pipeline.on_damage=error stops instead)", final,
                    problem)
        return False

    @staticmethod
    def _damaged(final: Path, problem: str) -> str:
        return (f"artifact {final} is damaged: {problem}; delete it or set pipeline.on_damage=rebuild to rebuild it")

    def _cached(self, stage: str, key: str) -> Result:
        shutil.rmtree(self.checkpoint_dir(stage, key), ignore_errors=True)  # left by a build killed after its rename
        return Result(self.path(stage, key), key, "cached", 0.0, self.manifest(stage, key))
