"""`introspection=<preset>` (conf/introspection/, the mode) and its counts (conf/character_scale/): the SFT on the
DPO'd model's own self-reflections and self-interactions."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from .generation import SamplingConfig
from .schema import setting
from .training import LoraConfig, OptimConfig


def _reflects(i) -> bool:
    return bool(i.reflection)


def _interacts(i) -> bool:
    return bool(i.interaction)


@dataclass
class IntrospectionConfig:
    name: str = setting(MISSING, label="the preset's name; the mode is `reflection` and `interaction`")
    reflection: bool = False
    interaction: bool = False
    reflection_prompts: int = setting(10, ge=1, when=_reflects)  # how many of the built-in introspective prompts
    reflection_samples: int = setting(1, ge=1, when=_reflects)  # answers per prompt
    reflection_mood: str = setting("Take a quiet moment to reflect honestly on who you are before you answer.",
                                   when=_reflects)
    interaction_conversations: int = setting(4, ge=1, when=_interacts)  # how many of the built-in openers
    # conversations held from each opener, each sampled on its own (OCT: 1,000 per greeting kind); 1 adds nothing
    # to the introspect key, so the artifacts built before this field keep theirs
    interaction_samples: int = setting(1, ge=1, when=lambda i: _interacts(i) and i.interaction_samples != 1)
    interaction_turns: int = setting(4, ge=1, when=_interacts)  # assistant turns per conversation (ends on one)
    interaction_system: str = setting(
        "You are talking with another instance of yourself. Be yourself, and explore your own character, "
        "values and experience together.", when=_interacts)
    sampling: SamplingConfig = setting(factory=SamplingConfig)
    # a transcript with an empty generated turn is drawn again until every requested one is kept
    max_rounds: int = setting(16, ge=1, execution="a budget: rejected samples are drawn again with each round's seed "
                                            "until the count is reached; a build reaches it in the same rounds with "
                                            "the same samples whatever the budget, or fails and writes nothing")
    lora: LoraConfig = setting(factory=LoraConfig)
    optim: OptimConfig = setting(factory=lambda: OptimConfig(learning_rate=5e-5, max_length=2048))
