"""Stage: online RL with TRL's stock `RLOOTrainer` (REINFORCE with a leave-one-out baseline and a KL penalty to the
reference policy), rewarded by a SteerLM RM's weighted attributes (`online_rl`).

HelpSteer2-Preference (arXiv 2410.01257) aligned Llama-3.1-70B-Instruct with its RM by REINFORCE: Arena Hard 85.0,
AlpacaEval 2 LC 57.6, MT Bench 8.98, against 58.6 / 43.8 / 8.74 for PPO with the same RM. Recipe
llama3.1-70b/reinforce.
"""

from __future__ import annotations

from hs2trl.runtime.args import parse_stage_args, run_stage
from hs2trl.stages import online_rl

COMMAND = "rloo"  # the hs2 command that runs this stage (named in lock holder records)


def _types():
    from trl import ModelConfig, RLOOConfig

    return online_rl.OnlineRLArguments, RLOOConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def check(data_args, training_args, model_args) -> None:
    online_rl.check(data_args, training_args, model_args)


def main(data_args, training_args, model_args) -> None:
    from trl import RLOOTrainer

    online_rl.run(RLOOTrainer, COMMAND, data_args, training_args, model_args)


if __name__ == "__main__":
    run_stage(parse, main)
