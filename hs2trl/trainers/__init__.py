"""TRL trainer subclasses: the SteerLM regression reward trainer and the SteerLM 2.0 trainer."""

from .regression_rm import DataCollatorForRegression, RegressionRewardConfig, RegressionRewardTrainer

__all__ = ["DataCollatorForRegression", "RegressionRewardConfig", "RegressionRewardTrainer"]
