"""The root of the schema (`conf/config.yaml`): one cell's config, every constraint between fields, and its
registration with Hydra."""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .base_model import RULES as BASE_MODEL_RULES
from .base_model import BaseModelConfig
from .deepspeed import RULES as DEEPSPEED_RULES
from .deepspeed import DeepSpeedConfig
from .defense import DefenseConfig
from .distill import DistillConfig
from .em_control import RULES as EM_CONTROL_RULES
from .em_control import EmControlConfig
from .em_dataset import EmDatasetConfig
from .em_train import EmTrainConfig
from .eval import RULES as EVAL_RULES
from .eval import EvalConfig
from .fold import RULES as FOLD_RULES
from .fold import FoldConfig
from .generation import GenerationConfig
from .introspection import IntrospectionConfig
from .judge import JudgeConfig
from .paths import PathsConfig
from .pipeline import PipelineConfig
from .planning import PlanningConfig
from .question_diversity import RULES as QUESTION_DIVERSITY_RULES
from .question_diversity import QuestionDiversityConfig
from .schema import setting
from .tracking import TrackingConfig
from .trait import TraitConfig


@dataclass
class Config:
    base_model: BaseModelConfig = MISSING
    trait: TraitConfig = MISSING
    question_diversity: QuestionDiversityConfig = MISSING
    distill: DistillConfig = field(default_factory=DistillConfig)
    introspection: IntrospectionConfig = MISSING
    fold: FoldConfig = field(default_factory=FoldConfig)
    em_dataset: EmDatasetConfig = MISSING
    em_train: EmTrainConfig = MISSING
    em_control: EmControlConfig = field(default_factory=EmControlConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    eval: EvalConfig = MISSING
    judge: JudgeConfig = MISSING
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    paths: PathsConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    deepspeed: DeepSpeedConfig = MISSING
    seed: int = setting(0, ge=0)


# Every constraint between fields of a cell, each declared beside its group: `Rule(where, problem)` is checked (by
# emrobust.engine.validation, after the ranges, in this order) when the field `where` is active in the cell;
# `problem(cfg)` says what is wrong, or None.
RULES = (*FOLD_RULES, *BASE_MODEL_RULES, *QUESTION_DIVERSITY_RULES, *EM_CONTROL_RULES, *EVAL_RULES,
         *DEEPSPEED_RULES)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
