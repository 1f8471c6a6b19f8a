"""`paths=<preset>` (conf/paths/): where files are kept."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from .schema import setting

_WHERE = "where files are kept, not what they hold"


@dataclass
class PathsConfig:
    root: str = setting(".", execution=_WHERE)
    artifacts: str = setting(MISSING, execution=_WHERE)
    cache: str = setting(MISSING, execution=_WHERE)
    data_mirror: Optional[str] = setting(None, execution="a mirror is hash-checked against the pinned sha256")
    output_dir: str = setting(MISSING, execution=_WHERE)
