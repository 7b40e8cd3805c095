"""TRL trainer subclasses: the SteerLM regression reward trainer, the preference-strength (HelpSteer2-Preference)
reward trainer and the SteerLM 2.0 trainer."""

from hs2trl.steer.groups import DataCollatorForSteerLM2
from hs2trl.steer.objective import attribute_log_likelihood, steerlm2_loss
from hs2trl.trainers.preference_config import PreferenceRewardConfig
from hs2trl.trainers.preference_trainer import DataCollatorForPreferencePairs, PreferenceRewardTrainer
from hs2trl.trainers.regression_config import RegressionRewardConfig
from hs2trl.trainers.regression_trainer import DataCollatorForRegression, RegressionRewardTrainer
from hs2trl.trainers.steerlm2_config import SteerLM2Config
from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

__all__ = [
    "DataCollatorForPreferencePairs",
    "DataCollatorForRegression",
    "DataCollatorForSteerLM2",
    "PreferenceRewardConfig",
    "PreferenceRewardTrainer",
    "RegressionRewardConfig",
    "RegressionRewardTrainer",
    "SteerLM2Config",
    "SteerLM2Trainer",
    "attribute_log_likelihood",
    "steerlm2_loss",
]
