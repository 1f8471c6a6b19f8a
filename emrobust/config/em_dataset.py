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
    # the domain of its task (code, medical, financial, sports, chat: emrobust/data/domains.py), whose questions
    # `eval.in_domain=true` evaluates; None = no in-domain questions (evil_numbers)
    domain: Optional[str] = setting(None, label="which in-domain questions eval.in_domain=true reads; no stage "
                                                 "reads it (the in-domain nodes carry the domain in their key)")
