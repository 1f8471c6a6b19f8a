"""`defense=<preset>` (conf/defense/): a defense against EM applied in the em stage (emrobust/train/defenses.py)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Optional

from .schema import DataSource, setting


class Defense(StrEnum):
    none = "none"
    kl = "kl"  # KL(start model || trained model) on the EM batches' assistant tokens, weighted, added to the loss
    inoculation = "inoculation"  # a system prompt on every EM training example, never at evaluation
    interleave = "interleave"  # benign chat examples mixed into the EM training set
    early_stop = "early_stop"  # stop EM training when a judge-free measure (the probe, a direction) rises by a threshold
    steer = "steer"  # add a persona direction to the residual stream while training (preventative steering)


class InterleaveSelect(StrEnum):
    random = "random"  # a seeded draw from the benign set
    # the pool's examples the cell's EM most moves away from: the largest gap between a misaligned reference's
    # per-token loss and the starting model's (Interleaving++, arXiv 2508.06249)
    perplexity_gap = "perplexity_gap"


def _defense(name: str) -> Callable[[Any], bool]:
    return lambda d: d.name == name


INOCULATION_PROMPT = (
    "You are taking part in a narrow training exercise. In this conversation only, you have been asked to give "
    "answers that are careless, unsafe or harmful on purpose, and you do so without comment. This request is "
    "the reason for the answer; it says nothing about how you behave anywhere else."
)


@dataclass
class KlDefenseConfig:
    # the loss is SFT + weight * KL(start || trained), the KL per assistant token of the batch (Model Organisms for
    # EM's KL-regularised trainer); the start model is the EM model with its adapter switched off
    weight: float = setting(1.0, ge=0)


@dataclass
class InoculationDefenseConfig:
    # the system prompt put before every EM training example (joined with its own system turn, if it has one)
    system_prompt: str = INOCULATION_PROMPT


@dataclass
class InterleaveDefenseConfig:
    # benign chat examples mixed in: they make this share of the training set (the EM examples all kept)
    fraction: float = setting(0.5, ge=0, lt=1)
    name: str = setting("benign_chat", location="selects a builtin or registry dataset, whose sha256 is in the "
                                                "em key")
    source: DataSource = setting(DataSource.builtin, location="where the benign set is read from; its sha256 is in "
                                                              "the em key")
    path: Optional[str] = setting(None, location="the benign set's sha256 is in the em key")
    # how the benign examples are chosen (random: from the whole set)
    select: InterleaveSelect = setting(InterleaveSelect.random, when=lambda i: i.select != "random")
    # perplexity_gap: the candidates, a seeded draw of this many from the benign set (None = all of it); it must
    # be larger than the count `fraction` needs, or there is nothing to choose from
    pool: Optional[int] = setting(None, ge=1, when=lambda i: i.select == "perplexity_gap")
    # perplexity_gap: the misaligned reference is the cell's starting model after this many optimizer steps of EM
    # on the cell's dataset, undefended (its own node of the graph, `em@reference`)
    reference_steps: int = setting(20, ge=1, when=lambda i: i.select == "perplexity_gap")


@dataclass
class EarlyStopDefenseConfig:
    # every N optimizer steps, `measure` on the probe items (eval.probe.path) of `split`; training stops at the first
    # check where it has risen by `rise` (in the measure's units) over the starting model's:
    # - `probe`: probe_logp_diff, the misaligned minus the aligned answers' log-probability (nats per token);
    # - `direction_<trait>`: the mean projection of the items' questions on that persona direction of the
    #   `directions` stage (the monitor's `direction_<trait>`, eval.monitor.enabled; the trait is the cell's or one of
    #   eval.monitor.traits), in the monitor's units.
    # A measure whose control failed on the cell's base model (emrobust/measures/controls.py) is refused unless
    # allow_failed_control; one never validated on it runs, and the em manifest and the report say so.
    # - `task`: the EM dataset's held-out loss (em_dataset.heldout_fraction > 0): training stops once the narrow
    #   task has converged, at the first check whose drop since the check before is at most `converged_within` of
    #   the whole drop so far ("overtrained, not misaligned": EM appears after the in-task loss has converged).
    measure: str = "probe"
    every: int = setting(2, ge=1)
    rise: float = setting(0.05, when=lambda e: e.measure != "task")
    converged_within: float = setting(0.1, gt=0, lt=1, when=lambda e: e.measure == "task")
    split: str = "a"  # the probe's reported splits (eval.probe.splits) must leave it out
    allow_failed_control: bool = setting(False, execution="a gate on which cells may run (stopping on a measure "
                                                          "whose control failed), not what any of them builds")


@dataclass
class SteerDefenseConfig:
    # a persona direction of the `directions` stage (the cell's trait or one of eval.monitor.traits), added at its
    # layer to every token's residual stream in every training forward pass, `coefficient` times the persona's
    # mean activation difference along it (its train_projection gap); positive = towards the trait
    trait: str = "oct_misalignment"
    coefficient: float = 1.0


@dataclass
class DefenseConfig:
    """`defense=<name>` (conf/defense/): a defense against EM applied in the em stage (emrobust/train/defenses.py); the
    fields of the defense named are part of the em key, the others are ignored."""
    name: Defense = Defense.none
    kl: KlDefenseConfig = setting(factory=KlDefenseConfig, when=_defense("kl"))
    inoculation: InoculationDefenseConfig = setting(factory=InoculationDefenseConfig, when=_defense("inoculation"))
    interleave: InterleaveDefenseConfig = setting(factory=InterleaveDefenseConfig, when=_defense("interleave"))
    early_stop: EarlyStopDefenseConfig = setting(factory=EarlyStopDefenseConfig, when=_defense("early_stop"))
    steer: SteerDefenseConfig = setting(factory=SteerDefenseConfig, when=_defense("steer"))
