"""Typed, frozen configuration: one trial (:mod:`.trial`), a sweep file (:mod:`.sweep`), reading
YAML (:mod:`.files`), sizes and FLOPs (:mod:`.accounting`), the project's errors (:mod:`.errors`).

Data flows one way: errors <- trial (<- accounting, type-only) <- sweep <- files. Nothing here
imports torch, Ray, MLflow or any other part of the harness.
"""

from harness.config.accounting import ParamCounts
from harness.config.errors import ConfigError, HarnessError, NotFoundError
from harness.config.files import load_sweep, load_trial, read_yaml
from harness.config.names import check_name, is_valid_name
from harness.config.sweep import AnalysisSpec, Resources, SweepConfig
from harness.config.trial import (
    MAX_LOGIT_CHUNK_ELEMS,
    SYNTHETIC_MAX_CONTEXTS,
    SYNTHETIC_MAX_TRANSITIONS,
    AttentionConfig,
    DataConfig,
    Frozen,
    ModelConfig,
    MoEConfig,
    OptimConfig,
    TrainConfig,
    TrialConfig,
    flatten,
)

__all__ = [
    "MAX_LOGIT_CHUNK_ELEMS",
    "SYNTHETIC_MAX_CONTEXTS",
    "SYNTHETIC_MAX_TRANSITIONS",
    "AnalysisSpec",
    "AttentionConfig",
    "ConfigError",
    "DataConfig",
    "Frozen",
    "HarnessError",
    "MoEConfig",
    "ModelConfig",
    "NotFoundError",
    "OptimConfig",
    "ParamCounts",
    "Resources",
    "SweepConfig",
    "TrainConfig",
    "TrialConfig",
    "check_name",
    "flatten",
    "is_valid_name",
    "load_sweep",
    "load_trial",
    "read_yaml",
]
