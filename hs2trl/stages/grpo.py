"""Stage: online RL with TRL's stock `GRPOTrainer`, rewarded by a SteerLM RM (`online_rl`).

By default the reward is the folded scalar, as for `hs2 rloo`. With `--per_attribute_rewards true` each attribute is a
reward function of its own and the fold's weights become GRPO's `reward_weights`, so that its
`multi_objective_aggregation` (e.g. `normalize_then_sum`, GDPO) applies per attribute; one RM pass serves all five.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hs2trl.runtime.args import parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error
from hs2trl.stages import online_rl

COMMAND = "grpo"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class GRPOArguments(online_rl.OnlineRLArguments):
    per_attribute_rewards: bool = field(
        default=False,
        metadata={"help": "One reward function per RM attribute, weighted by the fold (GRPO's multi-objective mode)."},
    )


def _types():
    from trl import GRPOConfig, ModelConfig

    return GRPOArguments, GRPOConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def check(data_args, training_args, model_args) -> None:
    if data_args.per_attribute_rewards and training_args.reward_weights is not None:
        raise Hs2Error("--per_attribute_rewards sets GRPO's reward_weights from the fold (--weights): "
                       "leave reward_weights unset")
    attributes = online_rl.check(data_args, training_args, model_args)
    if data_args.per_attribute_rewards and attributes is not None and len(attributes) == 1:
        rm = data_args.reward_model_path or data_args.reward_url
        raise Hs2Error(f"{rm}: --per_attribute_rewards needs a multi-attribute reward model (this one has one output)")


def reward_functions(data_args: GRPOArguments):
    def build(reward, training_args):
        if not data_args.per_attribute_rewards:
            return reward
        functions, weights = reward.attribute_functions()
        training_args.reward_weights = weights
        return functions

    return build


def main(data_args, training_args, model_args) -> None:
    from trl import GRPOTrainer

    online_rl.run(GRPOTrainer, COMMAND, data_args, training_args, model_args, reward_functions(data_args))


if __name__ == "__main__":
    run_stage(parse, main)
