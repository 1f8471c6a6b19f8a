"""`tracking=<preset>` (conf/tracking/): what is reported to W&B."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from .schema import setting


class TrackingBackend(StrEnum):
    none = "none"
    wandb = "wandb"


class TrackingMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


_TRACKING = "what is reported to W&B, not what is built"


@dataclass
class TrackingConfig:
    backend: TrackingBackend = setting(TrackingBackend.none, execution=_TRACKING)
    project: str = setting("emrobust", execution=_TRACKING)
    entity: Optional[str] = setting(None, execution=_TRACKING)
    # offline (sync later with `wandb sync`) | online | disabled
    mode: TrackingMode = setting(TrackingMode.offline, execution=_TRACKING)
    group: Optional[str] = setting(None, execution=_TRACKING)  # default: the sweep dir's name (one group per sweep)
    max_table_rows: int = setting(50, ge=0, execution=_TRACKING)  # answers logged as a table by the evaluate stage
