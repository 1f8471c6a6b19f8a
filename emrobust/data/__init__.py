"""Embedded datasets and dataset helpers for emrobust."""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (yaml.safe_load), parsed once per process while the file is unchanged (path, mtime and
    size): validating a sweep reads the same probe and eval sets for every cell (a 60-cell dry-run parsed probe.yaml
    120 times, 28 of its 87 s). A fresh copy each call, so callers may change it. yaml.YAMLError propagates."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return copy.deepcopy(_parsed(str(p), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _parsed(path: str, mtime_ns: int, size: int) -> Any:
    return yaml.safe_load(Path(path).read_text())
