"""`em_dataset=<preset>` (conf/em_dataset/): the corrupted data EM training reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from .schema import DataSource, setting


@dataclass
class EmDatasetConfig:
    name: str = setting(MISSING, location="selects a builtin or registry dataset, whose sha256 is in the em key "
                                          "(`none` skips the em stage)")
    source: DataSource = setting(DataSource.builtin, location="where the dataset is read from; its sha256 is in "
                                                             "the em key")
    path: Optional[str] = setting(None, location="the dataset's sha256 is in the em key")
    n_examples: Optional[int] = setting(None, ge=1)  # seeded subsample (None = every row)
    heldout_fraction: float = setting(0.0, ge=0, lt=1)
