"""Stage: PPO with TRL's stock `trl.experimental.ppo.PPOTrainer` (paper §4: HelpSteer2 prompts, reward = the RM's
goodness normalised by the mean and std of the goodness of the HelpSteer2 responses; GBS 128, rollout buffer 128,
constant LR 1e-7, KL 3e-3, 64 steps, eval every 4).

- Reward: `rewards.ScalarRewardModel(rm, "goodness", mean, std)`, the shape PPOTrainer's `get_reward` reads (backbone
  + 1-output `score`). `get_reward` reads the token before the first pad after the prompt; responses are cut after the
  end-of-turn token (`stop_token_id`) and the pad token differs from it, so that token is the end-of-turn token: the
  one the RM was trained on (see data/chat.py).
- Normalisation: measured once and stored with the RM (`hs2trl_reward.json`); when the RM has none, it is measured
  first on the responses of the given dataset (or `--normalization_dataset`), and the stage says so.
- Value model: by default a trainable copy of the scalarised RM (folded goodness head, same normalisation), so the
  critic starts out predicting the normalised reward; `--value_model_init policy` starts it from the policy with a
  zero head instead (predicting the mean reward, 0).
- `--max_steps N` sets `total_episodes = N x` the rollout batch (PPOTrainer itself counts episodes); `eval_steps`
  sets how often PPOTrainer's sample-generation eval runs (its only eval hook).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

from hs2trl.data.conversations import distinct_prompts
from hs2trl.data.sources import read_records
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.rm.loading import load_reward_model, probe_reward_model
from hs2trl.runtime.args import DataArguments, load_splits, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.models import load_policy, load_policy_tokenizer
from hs2trl.runtime.say import say
from hs2trl.runtime.training import announce, require_model, save_policy
from hs2trl.trl_internals import ppo_module

# PPOTrainer lives in trl.experimental in TRL 1.10-1.12 and is gone from 1.13: on a newer TRL this import stops with
# one line naming the [ppo] extra (`hs2 ppo` checks it before importing this module).
PPOConfig = ppo_module().PPOConfig

COMMAND = "ppo"  # the hs2 command that runs this stage (named in lock holder records)

VALUE_INITS = ("reward_model", "policy")


@dataclass
class PPOArguments(DataArguments):
    reward_weights: str = field(
        default="goodness",
        metadata={"help": "Attribute weights of the scalar reward: a preset or one number per RM output."},
    )
    normalization_dataset: str | None = field(
        default=None,
        metadata={"help": "Responses to measure the reward's mean/std on, when the RM has none stored "
                          "(default: the training dataset, e.g. HelpSteer2)."},
    )
    normalization_split: str = field(default="train", metadata={"help": "Split of normalization_dataset (Hub)."})
    normalization_only: bool = field(
        default=False, metadata={"help": "Measure and store the reward normalisation, then stop (one process)."}
    )
    scoring_batch_size: int = field(default=16, metadata={"help": "Batch size when measuring the normalisation."})
    value_model_init: str = field(
        default="reward_model", metadata={"help": "Value model start: reward_model (scalarised RM) or policy.",
                                          "choices": list(VALUE_INITS)}
    )
    max_prompt_length: int = field(
        default=1024, metadata={"help": "Prompts longer than this many tokens are left out (and counted)."}
    )


@dataclass
class PPOStageConfig(PPOConfig):
    """PPOConfig with no Hub defaults for the model paths: the policy is --model, the RM must be named."""

    reward_model_path: str | None = field(default=None, metadata={"help": "The SteerLM reward model (hs2 train-rm)."})
    sft_model_path: str | None = field(default=None, metadata={"help": "Unused: the policy is --model."})


def _types():
    from trl import ModelConfig

    return PPOArguments, PPOStageConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def require_reward_model(training_args) -> str:
    if not training_args.reward_model_path:
        raise Hs2Error("no reward model given: pass --reward-model (a folder from `hs2 train-rm`) or set "
                       "reward_model_path in the recipe")
    return training_args.reward_model_path


def normalization_dir(rm_path: str, output_dir: str) -> str:
    """Where the normalisation is stored: with the RM when it is a local folder, else in the output folder."""
    from hs2trl.runtime.pretrained import resolve_model

    local = resolve_model(rm_path)
    return local if os.path.isdir(local) else output_dir


def stored_reward_normalization(rm_path: str, output_dir: str, weights: str) -> tuple[float, float] | None:
    from hs2trl.rm.rewards import stored_normalization, weights_key

    return stored_normalization(normalization_dir(rm_path, output_dir), weights_key(weights))


def normalization_conversations(data_args: PPOArguments) -> tuple[str, list[list[dict]]]:
    """The responses whose scores define mean/std: every (prompt, response) row of the dataset."""
    from hs2trl.data.helpsteer2 import conversation

    source = data_args.normalization_dataset or data_args.dataset_name
    split = data_args.normalization_split if data_args.normalization_dataset else data_args.dataset_train_split
    records = read_records(source, split)
    if not records or not any(k in records[0].data for k in ("response", "messages")):
        raise Hs2Error(
            f"{source}: no responses to measure the reward normalisation on, and the reward model has none stored: "
            "pass --normalization_dataset with HelpSteer2-format rows (e.g. nvidia/HelpSteer2)"
        )
    return f"{source}[{split}]", [conversation(r) for r in records]


def reward_normalization(data_args: PPOArguments, training_args, model_args) -> tuple[float, float]:
    """The stored (mean, std) of the RM's scalar reward, measured first (by the main process) when missing."""
    from accelerate import PartialState

    from hs2trl.rm.rewards import measure_normalization

    rm_path, weights = require_reward_model(training_args), data_args.reward_weights
    stored = stored_reward_normalization(rm_path, training_args.output_dir, weights)
    if stored is not None:
        return stored
    source, conversations = normalization_conversations(data_args)  # every rank: a bad row fails all at once
    state = PartialState()
    directory = normalization_dir(rm_path, training_args.output_dir)
    failure = None
    if state.is_main_process:
        say(f"reward model {rm_path} has no stored '{weights}' normalisation: measuring it on the "
            f"{len(conversations)} responses of {source}")
        model, tokenizer, _ = load_reward_model(rm_path, dtype=model_args.dtype, device=str(state.device),
                                                spread=state.num_processes == 1)
        os.makedirs(directory, exist_ok=True)
        try:
            entry = measure_normalization(directory, conversations, weights, dataset=source,
                                          batch_size=data_args.scoring_batch_size, model=model, tokenizer=tokenizer)
            say(f"'{entry['name']}' reward normalisation: mean {entry['mean']:.4f}, std {entry['std']:.4f} "
                f"over {entry['n']} responses (stored in {os.path.join(directory, 'hs2trl_reward.json')})")
        except Hs2Error as err:  # raised below on every rank together, not here alone (the others would wait)
            failure = str(err)
        del model
    state.wait_for_everyone()
    stored = stored_reward_normalization(rm_path, training_args.output_dir, weights)
    if stored is None:
        raise Hs2Error(failure or f"{source}: the '{weights}' reward normalisation could not be measured (see rank 0)")
    return stored


def build_reward_model(rm_path: str, weights: str, mean: float, std: float, dtype: str | None = None):
    """The RM as PPO's scalar reward: `(w·heads - mean) / std` at the end-of-turn token."""
    from hs2trl.rm.rewards import ScalarRewardModel

    rm, _, _ = load_reward_model(rm_path, dtype=dtype)
    return ScalarRewardModel(rm, weights, mean, std)


def build_value_model(init: str, rm_path: str, policy_path: str, tokenizer, weights: str, mean: float, std: float,
                      model_args):
    """A 1-output model with `base_model_prefix` + `score`, as PPOTrainer's critic expects."""
    if init == "reward_model":
        value = build_reward_model(rm_path, weights, mean, std, model_args.dtype)
        return value.train()
    import torch
    from transformers import AutoModelForSequenceClassification

    from hs2trl.runtime.models import model_init_kwargs
    from hs2trl.runtime.pretrained import resolve_model

    value = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(policy_path), num_labels=1, **model_init_kwargs(model_args)
    )
    if len(tokenizer) > value.get_input_embeddings().num_embeddings:
        value.resize_token_embeddings(len(tokenizer))
    value.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        value.score.weight.zero_()  # start at the mean normalised reward (0)
    return value


def check_same_vocabulary(tokenizer, rm_path: str) -> None:
    """The RM reads the policy's token ids directly: both must use the same vocabulary and pad token."""
    rm_tokenizer = probe_reward_model(rm_path)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab() or rm_tokenizer.pad_token_id != tokenizer.pad_token_id:
        raise Hs2Error(f"reward model {rm_path}: its tokenizer differs from the policy's (PPO feeds the policy's "
                       "token ids to the reward model): train the RM from the same base model family")


def encode_prompts(tokenizer, prompts: list[list[dict]], max_length: int) -> tuple[list[dict], int]:
    """Prompts -> `{"input_ids"}` rows ending on the assistant header; those over max_length are counted out."""
    from hs2trl.data.chat import encode_prompt

    rows, dropped = [], 0
    for messages in prompts:
        ids = encode_prompt(tokenizer, messages)
        if len(ids) > max_length:
            dropped += 1
            continue
        rows.append({"input_ids": ids})
    return rows, dropped


def load_prompt_rows(data_args: PPOArguments, tokenizer) -> tuple[list[dict], list[dict], list[str]]:
    train, evaluation = load_splits(data_args)
    notes, out = [], []
    for name, records in (("train", train), ("evaluation", evaluation)):
        if not records:
            out.append([])
            continue
        prompts, repeats = distinct_prompts(records)
        rows, dropped = encode_prompts(tokenizer, prompts, data_args.max_prompt_length)
        notes.append(f"{name}: {len(rows)} distinct prompts from {len(records)} rows ({repeats} rows repeat a prompt; "
                     f"{dropped} prompts over {data_args.max_prompt_length} tokens left out)")
        out.append(rows)
    if not out[0]:
        raise Hs2Error(f"{data_args.dataset_name}: no prompts to train on")
    return out[0], out[1], notes


def check(data_args, training_args, model_args) -> None:
    policy_path = require_model(model_args)
    rm_path = require_reward_model(training_args)
    if data_args.resume:
        raise Hs2Error("--resume: TRL's PPOTrainer cannot resume a run; start a new one from a saved checkpoint with "
                       "--model OUTPUT/checkpoint-N")
    tokenizer = load_policy_tokenizer(policy_path)
    check_same_vocabulary(tokenizer, rm_path)
    if stored_reward_normalization(rm_path, training_args.output_dir, data_args.reward_weights) is None:
        normalization_conversations(data_args)
    if not data_args.normalization_only:
        load_prompt_rows(data_args, tokenizer)


def left_padding_collator(tokenizer):
    """PPOTrainer appends responses after the query: queries are padded on the left."""
    from transformers import DataCollatorWithPadding

    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    return DataCollatorWithPadding(left)


def set_episode_counts(training_args, world_size: int, n_prompts: int) -> None:
    """`max_steps` -> `total_episodes`; `eval_steps` -> how many sample-generation evals PPOTrainer runs."""
    rollout = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    if training_args.total_episodes is None and training_args.max_steps > 0:
        training_args.total_episodes = training_args.max_steps * rollout
    episodes = training_args.total_episodes or int(training_args.num_train_epochs * n_prompts)
    steps = math.ceil(episodes / rollout)
    if str(training_args.eval_strategy) in ("steps", "IntervalStrategy.STEPS") and training_args.eval_steps:
        every = (training_args.eval_steps if training_args.eval_steps >= 1
                 else max(1, round(steps * training_args.eval_steps)))
        training_args.num_sample_generations = max(1, steps // int(every))
    say(f"PPO: {steps} steps x rollout batch {rollout} = {episodes} episodes")


def main(data_args, training_args, model_args) -> None:
    with output_lock(training_args.output_dir, COMMAND):  # no continues_from: TRL's PPOTrainer cannot resume
        train(data_args, training_args, model_args)


def train(data_args, training_args, model_args) -> None:
    from accelerate import PartialState
    from datasets import Dataset
    from trl import get_peft_config
    PPOTrainer = ppo_module().PPOTrainer

    from hs2trl.data.chat import end_of_turn_id

    push, hub_model_id = take_push_settings(training_args)
    policy_path, rm_path = require_model(model_args), require_reward_model(training_args)
    tokenizer = load_policy_tokenizer(policy_path)
    check_same_vocabulary(tokenizer, rm_path)
    mean, std = reward_normalization(data_args, training_args, model_args)
    if data_args.normalization_only:
        return
    train_rows, eval_rows, notes = load_prompt_rows(data_args, tokenizer)
    for note in notes:
        say(note)
    say(f"reward = ({data_args.reward_weights} - {mean:.4f}) / {std:.4f}")
    if training_args.stop_token is None and training_args.stop_token_id is None:
        training_args.stop_token_id = end_of_turn_id(tokenizer)  # cut responses after the end-of-turn token
    set_episode_counts(training_args, PartialState().num_processes, len(train_rows))

    peft_config = get_peft_config(model_args)
    policy = load_policy(policy_path, tokenizer, model_args, training_args)
    ref_model = None if peft_config else load_policy(policy_path, tokenizer, model_args, training_args)
    weights = data_args.reward_weights
    reward_model = build_reward_model(rm_path, weights, mean, std, model_args.dtype)
    value_model = build_value_model(data_args.value_model_init, rm_path, policy_path, tokenizer, weights, mean, std,
                                    model_args)
    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_model,
        reward_model=reward_model,
        train_dataset=Dataset.from_list(train_rows),
        value_model=value_model,
        data_collator=left_padding_collator(tokenizer),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        peft_config=peft_config,
    )
    announce(trainer)
    trainer.train()  # PPOTrainer.train takes no checkpoint to resume from
    save_policy(trainer, training_args.output_dir)
    say(f"PPO policy saved to {training_args.output_dir}")
    finish_training(trainer, training_args.output_dir, (data_args, training_args, model_args), "ppo", push,
                    hub_model_id, save=False)


if __name__ == "__main__":
    run_stage(parse, main)
