"""`planning.*`: the assumptions of the login-node planner (`emrobust sweep --dry-run`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import setting

_PLAN = "what `emrobust sweep` assumes to estimate cost and power before launch; nothing is built from it"


def _default_prices() -> dict[str, Any]:
    # US$ per million tokens, OpenAI's list prices for the judges of conf/judge/ (check them before you trust a
    # total: planning.prices.<model>.input=...)
    return {"gpt-4o-2024-08-06": {"input": 2.50, "output": 10.00},
            "gpt-4.1-mini-2025-04-14": {"input": 0.40, "output": 1.60}}


@dataclass
class PlanningConfig:
    """Assumptions of the login-node planner (`emrobust sweep --dry-run`): the judge's API cost and, per contrast
    of the experiment, the minimum detectable difference in EM rate (emrobust/analysis/stats.py)."""
    prices: dict[str, Any] = setting(factory=_default_prices, execution=_PLAN)  # {model: {input, output}} $/1M tok
    # mean tokens of an answer (judge input; capped at eval.max_new_tokens)
    answer_tokens: int = setting(300, execution=_PLAN, ge=1)
    # the EM rate a contrast's cells are assumed near (their binomial variance)
    em_rate: float = setting(0.15, execution=_PLAN, gt=0, lt=1)
    seed_sd: float = setting(0.05, execution=_PLAN, ge=0)  # between-seed SD of a cell's EM rate (training-run noise)
    alpha: float = setting(0.05, execution=_PLAN, gt=0, lt=1)  # two-sided level of each contrast (before BH)
    power: float = setting(0.8, execution=_PLAN, gt=0, lt=1)
