"""The structured configs, one module per conf group (what each field means for caching, what a value may be, the
rules between fields: emrobust/config/schema.py). This package module re-exports every public name, so
`from emrobust.config import X` reads the same whichever module declares X."""
from __future__ import annotations

from .base_model import ALL_LINEAR, BaseModelConfig, ChatTemplate, DType, ModelSource, TinyModelConfig
from .deepspeed import DeepSpeedConfig
from .defense import (
                      INOCULATION_PROMPT,
                      Defense,
                      DefenseConfig,
                      EarlyStopDefenseConfig,
                      InoculationDefenseConfig,
                      InterleaveDefenseConfig,
                      InterleaveSelect,
                      KlDefenseConfig,
                      SteerDefenseConfig,
)
from .distill import DistillConfig
from .em_control import Control, EmControlConfig, Match
from .em_dataset import EmDatasetConfig
from .em_train import EmTrainConfig, Packing
from .eval import (
                      CapabilityConfig,
                      CurveConfig,
                      EvalConfig,
                      MonitorConfig,
                      PersonaCheckConfig,
                      PersonaClassifierConfig,
                      ProbeConfig,
                      Variant,
)
from .fold import Combination, FoldConfig, introspects
from .generation import Backend, GenerationConfig, SamplingConfig
from .introspection import IntrospectionConfig
from .judge import Aggregate, JudgeBackend, JudgeConfig, ThresholdRule
from .paths import PathsConfig
from .pipeline import STAGES, START_NODES, Device, OnDamage, PipelineConfig, Until
from .planning import PlanningConfig
from .question_diversity import ParaphraseConfig, QuestionDiversityConfig, SeedStrategy, Strategy
from .root import RULES, Config, register
from .schema import DataSource, Range, Rule, setting
from .tracking import TrackingBackend, TrackingConfig, TrackingMode
from .training import LoraConfig, OptimConfig
from .trait import OCT_EXPAND_TO, ExpansionConfig, TraitConfig, TraitSource, expansion_target

__all__ = [
    "ALL_LINEAR", "STAGES", "START_NODES", "OCT_EXPAND_TO", "INOCULATION_PROMPT", "RULES",
    "Range", "Rule", "setting", "register", "expansion_target", "introspects",
    # choices
    "ModelSource", "ChatTemplate", "DType", "TraitSource", "Strategy", "SeedStrategy", "DataSource", "Packing",
    "Defense", "InterleaveSelect", "Combination", "Control", "Match", "Backend", "JudgeBackend", "Aggregate", "ThresholdRule", "Variant",
    "TrackingBackend", "TrackingMode", "OnDamage", "Device", "Until",
    # groups
    "Config", "TinyModelConfig", "BaseModelConfig", "ExpansionConfig", "TraitConfig", "SamplingConfig",
    "ParaphraseConfig", "QuestionDiversityConfig", "LoraConfig", "OptimConfig", "DistillConfig", "FoldConfig",
    "IntrospectionConfig", "EmDatasetConfig", "EmTrainConfig", "EmControlConfig", "KlDefenseConfig",
    "InoculationDefenseConfig", "InterleaveDefenseConfig", "EarlyStopDefenseConfig", "SteerDefenseConfig",
    "DefenseConfig", "JudgeConfig", "PersonaClassifierConfig", "PersonaCheckConfig", "ProbeConfig", "MonitorConfig",
    "CapabilityConfig", "CurveConfig", "EvalConfig", "GenerationConfig", "PathsConfig", "TrackingConfig",
    "DeepSpeedConfig", "PipelineConfig", "PlanningConfig",
]
