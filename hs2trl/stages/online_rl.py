"""What the online RL stages share (`hs2 rloo`: TRL's RLOOTrainer, `hs2 grpo`: TRL's GRPOTrainer): the SteerLM RM
as the reward, the prompts, the checks a run makes before it loads a model, and the run itself.

The reward is `rm.reward_function.SteerLMReward`, a callable: TRL reads only `logits[:, 0]` of a reward *model*,
which for a 5-head SteerLM RM is helpfulness alone. Everything else is stock TRL: KL to the reference policy (`beta`),
`num_generations` per prompt, vLLM generation (`--use_vllm true --vllm_mode colocate|server`), PEFT, DeepSpeed, and
checkpoints (`--resume`), Hub push and model card as every hs2 stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hs2trl.data.records import Record
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.rm.loading import probe_reward_model
from hs2trl.runtime.args import DataArguments, load_splits
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.models import load_policy, load_policy_tokenizer
from hs2trl.runtime.pretrained import resolve_model
from hs2trl.runtime.process import is_main_process
from hs2trl.runtime.resume import resumed, train_resumable
from hs2trl.runtime.say import say
from hs2trl.runtime.training import announce, evaluation_off_without_data, require_model, save_policy


@dataclass
class OnlineRLArguments(DataArguments):
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "The reward model: a SteerLM RM (hs2 train-rm) or a 1-output one (hs2 export-rm)."},
    )
    reward_url: str | None = field(
        default=None, metadata={"help": "Score with `hs2 serve-rm` server(s) instead of loading the RM: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    attribute_weights: str | None = field(
        default=None,
        metadata={"help": "How the RM's outputs fold into one reward: a preset (goodness, rewardbench-llama3-70b, "
                          "...) or one number per output (default goodness; a 1-output RM is its own reward)."},
    )
    normalize_reward: bool = field(
        default=False,
        metadata={"help": "Reward = (fold - mean) / std with the statistics `hs2 rm-normalize` stored beside the RM."},
    )
    reward_batch_size: int = field(default=16, metadata={"help": "Completions per reward-model forward pass."})
    reward_max_length: int | None = field(
        default=None, metadata={"help": "Score at most this many tokens per completion (cut from the left, counted)."}
    )
    reward_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the reward model (default: the policy's --dtype, else float32)."}
    )
    max_prompt_length: int = field(
        default=1024, metadata={"help": "Prompts longer than this many tokens are left out (and counted)."}
    )
    log_rewards: bool = field(
        default=True,
        metadata={"help": "Append each scored completion (prompt, completion, attributes, reward, step) to "
                          "OUTPUT/rewards.jsonl (one file per process when there are several)."},
    )


# ----------------------------------------------------------------------------------------------- checks


def check_reward(data_args: OnlineRLArguments) -> list[str] | None:
    """The RM is a sequence-classification model (or its servers answer), the weights fit its outputs, and the
    normalisation asked for is stored: all read from its folder (or its server), before any model loads. Returns its
    output names (None for a Hub id)."""
    from hs2trl.rm.reward_function import missing_normalization
    from hs2trl.rm.scorer import open_scorer, require_one_source

    rm, url = data_args.reward_model_path, data_args.reward_url
    require_one_source(rm, url)
    if rm:
        probe_reward_model(rm)
        if not os.path.isdir(resolve_model(rm)):
            return None  # a Hub id: checked when it loads
    scorer = open_scorer(rm, url, data_args.reward_api_key_env)
    try:
        _, key = scorer.weights(data_args.attribute_weights, "goodness")
        if data_args.normalize_reward and scorer.normalization(key) is None:
            raise Hs2Error(missing_normalization(rm or url, key))
        return scorer.attributes
    finally:
        scorer.close()


def prompt_rows(records: list[Record], tokenizer, max_length: int, source: str) -> tuple[list[dict], str]:
    """Each distinct prompt once, as `{"prompt": chat messages}` (TRL's conversational format); prompts over
    `max_length` tokens are left out and counted. Empty prompts stop the run, counted and the first one named."""
    import json

    from hs2trl.data.chat import encode_prompt
    from hs2trl.data.conversations import prompt_of

    empty = [r for r in records if _empty_prompt(r.data.get("prompt"))]
    if empty:
        raise Hs2Error(f"{empty[0].where('prompt')}: empty prompt ({len(empty)} of {len(records)} rows of {source} "
                       "have one): remove them or fill them in")
    rows, seen, long_ = [], set(), 0
    for record in records:
        messages = prompt_of(record)
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        if len(encode_prompt(tokenizer, messages)) > max_length:
            long_ += 1
            continue
        rows.append({"prompt": messages})
    note = (f"{source}: {len(rows)} distinct prompts from {len(records)} rows "
            f"({long_} over max_prompt_length={max_length} tokens left out)")
    return rows, note


def _empty_prompt(prompt) -> bool:
    """A `prompt` cell with no text: a blank string, or chat messages that are all blank."""
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, list):
        return not any(isinstance(m, dict) and str(m.get("content") or "").strip() for m in prompt)
    return False


def load_prompts(data_args: OnlineRLArguments, tokenizer) -> tuple[list[dict], list[dict], list[str]]:
    """(train prompt rows, eval prompt rows, one line on each)."""
    train, evaluation = load_splits(data_args)
    train_rows, note = prompt_rows(train, tokenizer, data_args.max_prompt_length, data_args.dataset_name)
    notes = [note]
    eval_rows = []
    if evaluation:
        eval_rows, eval_note = prompt_rows(evaluation, tokenizer, data_args.max_prompt_length, "evaluation")
        notes.append(eval_note)
    if not train_rows:
        raise Hs2Error(f"{data_args.dataset_name}: no prompts to train on ({note})")
    return train_rows, eval_rows, notes


def check(data_args: OnlineRLArguments, training_args, model_args) -> list[str] | None:
    """Everything a run reads, checked in the caller before `accelerate launch`: the RM, the weights, the
    normalisation, the prompts. Returns the RM's output names (None for a Hub id)."""
    attributes = check_reward(data_args)
    load_prompts(data_args, load_policy_tokenizer(require_model(model_args)))
    return attributes


# ----------------------------------------------------------------------------------------------- the run


def load_reward(data_args: OnlineRLArguments, training_args, model_args):
    """The RM as a TRL reward function, on this process's device (moved or sharded once the trainer exists)."""
    from accelerate import PartialState

    from hs2trl.rm.reward_function import SteerLMReward, reward_log_path

    state = PartialState()
    log_path = None
    if data_args.log_rewards:
        os.makedirs(training_args.output_dir, exist_ok=True)
        log_path = reward_log_path(training_args.output_dir, state.process_index, state.num_processes)
    return SteerLMReward.load(
        data_args.reward_model_path, data_args.attribute_weights, data_args.normalize_reward,
        dtype=data_args.reward_dtype or model_args.dtype or "float32", url=data_args.reward_url,
        api_key_env=data_args.reward_api_key_env, batch_size=data_args.reward_batch_size,
        max_length=data_args.reward_max_length, log_path=log_path,
    )


def describe_reward(reward, data_args: OnlineRLArguments) -> str:
    if reward.weights is None:
        fold = f"the 1-output RM {reward.scorer.name}"
    else:
        fold = " + ".join(f"{w:g}*{a}" for w, a in zip(reward.weights, reward.attributes) if w)
    if reward.mean or reward.std != 1.0:
        fold = f"({fold} - {reward.mean:.4f}) / {reward.std:.4f}"
    return f"reward = {fold}"


def run(trainer_cls, command: str, data_args: OnlineRLArguments, training_args, model_args, reward_funcs=None) -> None:
    """Load, train (resumable), save, card and push: the body of `hs2 rloo` and `hs2 grpo`. `reward_funcs(reward,
    training_args)` may turn the reward into several functions (GRPO's per-attribute mode)."""
    from datasets import Dataset
    from trl import get_peft_config

    with output_lock(training_args.output_dir, command), continues_from(resumed(training_args.output_dir)):
        push, hub_model_id = take_push_settings(training_args)
        policy_path = require_model(model_args)
        tokenizer = load_policy_tokenizer(policy_path)
        train_rows, eval_rows, notes = load_prompts(data_args, tokenizer)
        evaluation_off_without_data(training_args, bool(eval_rows))
        reward = load_reward(data_args, training_args, model_args)
        funcs = reward_funcs(reward, training_args) if reward_funcs else reward
        for note in notes:
            say(note)
        say(f"{describe_reward(reward, data_args)}")
        trainer = trainer_cls(
            model=load_policy(policy_path, tokenizer, model_args, training_args),
            reward_funcs=funcs,
            args=training_args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows and training_args.do_eval else None,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
        reward.prepare(trainer.accelerator)
        announce(trainer)
        train_resumable(trainer, training_args.output_dir, data_args.resume)
        if reward.truncated:
            say(f"{reward.truncated} completions longer than reward_max_length={data_args.reward_max_length} "
                "tokens were scored on their last tokens")
        save_policy(trainer, training_args.output_dir)
        if is_main_process():  # the log (reward, attributes/<name>, kl, ...) beside the model, not only in checkpoints
            trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
            say(f"{trainer_cls.__name__.removesuffix('Trainer')} policy saved to {training_args.output_dir}")
        finish_training(trainer, training_args.output_dir, (data_args, training_args, model_args),
                        command, push, hub_model_id, save=False)
