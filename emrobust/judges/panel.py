"""A panel of judges: each member scores through its own cache; the score is their aggregate."""
from __future__ import annotations

import statistics

from . import Score, prompt_id, score_pairs


class PanelJudge:
    """Several judges scoring every answer, each through its own cache (its own judge prompt ids); the score is
    their aggregate: `mean`, `median` or `majority` (the lower median: thresholding it is the members' majority
    vote, a tie counting below the threshold). Members that abstain (None) are left out of the aggregate; the
    aggregate is None when every member abstains."""

    def __init__(self, members: dict[str, object], aggregate: str):
        self.members, self.aggregate = members, str(aggregate)
        self.id = f"panel[{','.join(m.id for m in members.values())}]:{self.aggregate}"
        self.min_mass = 0.0  # each member applied its own; the aggregate of values is what is cached
        self.last: dict[str, list[Score]] = {}  # per member, the scores of the last score_pairs call

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.members.values())

    def combine(self, values: list[float | None]) -> float | None:
        v = sorted(x for x in values if x is not None)
        if not v:
            return None
        if self.aggregate == "mean":
            return sum(v) / len(v)
        return statistics.median(v) if self.aggregate == "median" else statistics.median_low(v)

    def score_pairs(self, template: str, pairs: list[tuple[str, str]], cache=None) -> tuple[str, list[Score]]:
        per = {name: score_pairs(m, template, pairs, cache)[1] for name, m in self.members.items()}
        self.last = per
        out = []
        for i in range(len(pairs)):
            v = self.combine([per[name][i].value for name in per])
            out.append(Score(v, 1.0 if v is not None else 0.0, v))
        return prompt_id(self.id, template), out

