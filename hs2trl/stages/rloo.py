"""Stage: online RL with TRL's stock `RLOOTrainer` (REINFORCE with a leave-one-out baseline and a KL penalty to the
reference policy), rewarded by a SteerLM RM's weighted attributes (`online_rl`).

HelpSteer2-Preference (arXiv 2410.01257) aligned Llama-3.1-70B-Instruct with its RM by REINFORCE: Arena Hard 85.0,
AlpacaEval 2 LC 57.6, MT Bench 8.98, against 58.6 / 43.8 / 8.74 for PPO with the same RM. Recipe llama3.1-70b/reinforce.
"""

from __future__ import annotations

import sys

from hs2trl.runtime.args import parse_stage_args
from hs2trl.runtime.errors import exit_on_user_error
from hs2trl.stages import online_rl

COMMAND = "rloo"  # the hs2 command that runs this stage (named in lock holder records)


def _types():
    from trl import ModelConfig, RLOOConfig

    return online_rl.OnlineRLArguments, RLOOConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def check(argv) -> None:
    online_rl.check(*parse(argv))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from trl import RLOOTrainer

    online_rl.run(RLOOTrainer, COMMAND, *parse(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
