"""Training: plans, the plain-torch trainer and the runner (scvi-tools' ``scvi.train``)."""

from __future__ import annotations

from ._callbacks import (
    Callback,
    LearningRateMonitor,
    LoudEarlyStopping,
    SaveCheckpoint,
    ScibCallback,
)
from ._config import KwargsConfig, TrainerConfig, TrainingPlanConfig, merge_kwargs
from ._constants import METRIC_KEYS
from ._device import parse_device_args
from ._logger import SimpleLogger
from ._pyro_trainingplan import (
    LowLevelPyroTrainingPlan,
    LowLevelPyroTrainingPlanConfig,
    PyroTrainingPlan,
    PyroTrainingPlanConfig,
)
from ._semisupervised_trainingplan import (
    SemiSupervisedTrainingPlan,
    SemiSupervisedTrainingPlanConfig,
)
from ._strategy import Strategy
from ._trainer import Trainer
from ._trainingplans import TrainingPlan
from ._trainrunner import TrainRunner

__all__ = [
    "METRIC_KEYS",
    "Callback",
    "KwargsConfig",
    "LearningRateMonitor",
    "LoudEarlyStopping",
    "LowLevelPyroTrainingPlan",
    "LowLevelPyroTrainingPlanConfig",
    "PyroTrainingPlan",
    "PyroTrainingPlanConfig",
    "SaveCheckpoint",
    "ScibCallback",
    "SemiSupervisedTrainingPlan",
    "SemiSupervisedTrainingPlanConfig",
    "SimpleLogger",
    "Strategy",
    "TrainRunner",
    "Trainer",
    "TrainerConfig",
    "TrainingPlan",
    "TrainingPlanConfig",
    "merge_kwargs",
    "parse_device_args",
]
