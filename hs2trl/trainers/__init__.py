"""TRL trainer subclasses: the SteerLM regression reward trainer and the SteerLM 2.0 trainer."""

from .regression_rm import DataCollatorForRegression, RegressionRewardConfig, RegressionRewardTrainer
from .steerlm2 import (
    DataCollatorForSteerLM2,
    SteerLM2Config,
    SteerLM2Trainer,
    attribute_log_likelihood,
    steerlm2_loss,
)

__all__ = [
    "DataCollatorForRegression",
    "DataCollatorForSteerLM2",
    "RegressionRewardConfig",
    "RegressionRewardTrainer",
    "SteerLM2Config",
    "SteerLM2Trainer",
    "attribute_log_likelihood",
    "steerlm2_loss",
]
