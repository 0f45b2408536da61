"""Typed, frozen configuration: one trial (:mod:`.trial`, its data :mod:`.data`), a sweep file
(:mod:`.sweep`), reading YAML (:mod:`.files`), sizes and FLOPs (:mod:`.accounting`), names that
become paths (:mod:`.names`), the project's errors (:mod:`.errors`).

Data flows one way: errors, frozen <- data <- trial (<- accounting, type-only) <- sweep <- files.
Nothing here
imports torch, Ray, MLflow or any other part of the harness.
"""

from harness.config.accounting import ParamCounts
from harness.config.data import SYNTHETIC_MAX_CONTEXTS, SYNTHETIC_MAX_TRANSITIONS, DataConfig
from harness.config.errors import ConfigError, HarnessError, NotFoundError
from harness.config.files import load_sweep, load_trial, read_yaml
from harness.config.frozen import Frozen
from harness.config.names import check_name, is_valid_name
from harness.config.sweep import AnalysisSpec, Resources, SweepConfig
from harness.config.trial import (
    MAX_LOGIT_CHUNK_ELEMS,
    AttentionConfig,
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
