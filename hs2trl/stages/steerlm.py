"""Stage: SteerLM (attribute-conditioned SFT). Paper §4.5: Daring Anteater annotated by the RM, then SFT as usual.

1. Annotate: `hs2 annotate` (the `annotate` stage, run in this process) scores every conversation of the SFT data
   with the regression reward model, final assistant turn in the context of the turns before it, and adds the SteerLM
   labels (`label_<attribute>`: predictions clamped to [0, 4] and rounded) -> `<output_dir>/annotated.jsonl`.
   Resumable, and reused as is when complete.
2. Condition: the conversation's attribute string goes in its system message (`steering.condition`). One label set
   per conversation — that of the final assistant turn — is used for all its turns: a simplification, earlier
   assistant turns are not scored separately.
3. Train TRL's stock `SFTTrainer` on prompt-completion rows: `prompt` = the conditioned messages before an assistant
   turn, `completion` = that turn; the loss covers the completion only (TRL's `completion_only_loss`, which works
   with any chat template, unlike `assistant_only_loss`). `train_turns: all` (default) makes a row of every assistant
   turn of a multi-turn conversation; `last` only of the final one.

Input rows: anything `hs2trl.data.conversations` reads (chat `messages`, Daring Anteater `conversations`,
HelpSteer2 `prompt` + `response`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.data.records import Record
from hs2trl.data.sources import read_records
from hs2trl.hub.publish import take_push_settings
from hs2trl.runtime.args import DataArguments, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.resume import resumed
from hs2trl.runtime.say import say

COMMAND = "steerlm"  # the hs2 command that runs this stage (named in lock holder records)

TRAIN_TURNS = ("all", "last")
LABEL_PREFIX = "label_"  # hs2 annotate's SteerLM label columns


@dataclass
class SteerLMArguments(DataArguments):
    reward_model: str | None = field(
        default=None, metadata={"help": "The regression reward model that annotates the data (from `hs2 train-rm`)."}
    )
    reward_url: str | None = field(
        default=None, metadata={"help": "The reward model served by `hs2 serve-rm` instead: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    annotation_batch_size: int = field(default=16, metadata={"help": "Conversations per reward-model batch."})
    annotation_chunk_size: int = field(default=512, metadata={"help": "Conversations per resumable chunk."})
    train_turns: str = field(
        default="all",
        metadata={"help": "'all': a training row per assistant turn; 'last': only each conversation's final turn.",
                  "choices": list(TRAIN_TURNS)},
    )


def _types():
    from trl import ModelConfig, SFTConfig

    return SteerLMArguments, SFTConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def splits(data_args) -> dict[str, tuple[str, str, int | None]]:
    """name -> (source, split, max rows) for the training data and, when there is one, the evaluation data."""
    from hs2trl.data.records import is_local

    out = {"train": (data_args.dataset_name, data_args.dataset_train_split, data_args.max_train_rows)}
    if data_args.eval_dataset:
        out["eval"] = (data_args.eval_dataset, "train", data_args.max_eval_rows)
    elif not is_local(data_args.dataset_name) and data_args.dataset_test_split:
        out["eval"] = (data_args.dataset_name, data_args.dataset_test_split, data_args.max_eval_rows)
    return out


def annotated_path(output_dir: str, name: str) -> Path:
    return Path(output_dir) / ("annotated.jsonl" if name == "train" else f"annotated-{name}.jsonl")


def annotate(source: str, split: str, max_rows: int | None, reward_model: str | None, output: Path, batch_size: int,
             chunk_size: int, dtype: str, reward_url: str | None = None,
             reward_api_key_env: str | None = None) -> list[Record]:
    """Run `hs2 annotate` (resumable; a complete output is kept) with the RM, or its servers at `reward_url`, and
    return the annotated rows."""
    from hs2trl.stages import annotate as annotate_stage

    if reward_url:
        argv = ["--reward_url", reward_url] + (["--reward_api_key_env", reward_api_key_env]
                                                if reward_api_key_env else [])
    else:
        argv = ["--model_name_or_path", reward_model]
    argv += ["--dataset_name", source, "--dataset_split", split,
            "--output", str(output), "--batch_size", str(batch_size), "--chunk_size", str(chunk_size),
            "--dtype", dtype]
    if max_rows is not None:
        argv += ["--max_rows", str(max_rows)]
    output.parent.mkdir(parents=True, exist_ok=True)  # hs2 annotate expects the folder to exist
    annotate_stage.main(*annotate_stage.parse(argv))
    return read_records(str(output))


def conditioned_rows(records: list[Record], attributes, train_turns: str = "all") -> list[dict]:
    """Annotated rows -> SFT prompt-completion rows conditioned on each conversation's labels."""
    from hs2trl.data.conversations import sft_conversation
    from hs2trl.steer.steering import attribute_values, condition

    rows = []
    for record in records:
        messages = sft_conversation(record)
        missing = [a for a in attributes if LABEL_PREFIX + a not in record.data]
        if missing:
            raise Hs2Error(f"{record.where(LABEL_PREFIX + missing[0])}: missing SteerLM label (not annotated?)")
        levels = attribute_values({a: record.data[LABEL_PREFIX + a] for a in attributes}, attributes)
        turns = [j for j, m in enumerate(messages) if m["role"] == "assistant" and j > 0]
        for j in turns[-1:] if train_turns == "last" else turns:
            rows.append({"prompt": condition(messages[:j], levels, attributes), "completion": [messages[j]]})
    return rows


def rm_attributes(data_args) -> list[str]:
    """The annotating RM's outputs: from its config, or from its servers (`--reward-url`)."""
    from hs2trl.rm.scorer import open_scorer, require_one_source
    from hs2trl.stages.steerlm2 import missing_output

    require_one_source(data_args.reward_model, data_args.reward_url)
    if data_args.reward_model:
        missing_output("reward_model", data_args.reward_model, "hs2 train-rm")
    scorer = open_scorer(data_args.reward_model, data_args.reward_url, data_args.reward_api_key_env)
    scorer.close()
    return scorer.attributes


def check(data_args, training_args, model_args) -> None:
    """Parse, read and convert the data, check the reward model; no weights are loaded."""
    from hs2trl.data.conversations import sft_conversation
    from hs2trl.runtime.training import require_model

    require_model(model_args)
    rm_attributes(data_args)
    for source, split, max_rows in splits(data_args).values():
        records = read_records(source, split)[:max_rows]
        if not records:
            raise Hs2Error(f"{source}: no rows")
        for record in records:
            sft_conversation(record)


def build_trainer(data_args, training_args, model_args):
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    from hs2trl.runtime.models import load_policy, load_policy_tokenizer
    from hs2trl.runtime.training import require_model

    model_path = require_model(model_args)
    attributes = rm_attributes(data_args)
    rows = {}
    for name, (source, split, max_rows) in splits(data_args).items():
        annotated = annotate(source, split, max_rows, data_args.reward_model,
                             annotated_path(training_args.output_dir, name), data_args.annotation_batch_size,
                             data_args.annotation_chunk_size, model_args.dtype or "float32", data_args.reward_url,
                             data_args.reward_api_key_env)
        rows[name] = conditioned_rows(annotated, attributes, data_args.train_turns)
        say(f"SteerLM {name}: {len(rows[name])} conditioned assistant turns from {len(annotated)} "
            "conversations")
    tokenizer = load_policy_tokenizer(model_path, training_args.chat_template_path)
    training_args.chat_template_path = None  # applied above
    model = load_policy(model_path, tokenizer, model_args, training_args)
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(rows["train"]),
        eval_dataset=Dataset.from_list(rows["eval"]) if rows.get("eval") else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )


def main(data_args, training_args, model_args) -> None:
    output_dir = training_args.output_dir
    with output_lock(output_dir, COMMAND), continues_from(resumed(output_dir, "its annotated rows and ")):
        train((data_args, training_args, model_args))


def train(parsed) -> None:
    from hs2trl.hub.publish import finish_training
    from hs2trl.runtime.resume import train_resumable
    from hs2trl.runtime.training import announce, save_policy

    data_args, training_args, model_args = parsed
    push, hub_model_id = take_push_settings(training_args)
    trainer = build_trainer(data_args, training_args, model_args)
    announce(trainer, " (SteerLM: attribute-conditioned SFT)")
    train_resumable(trainer, training_args.output_dir, data_args.resume)
    if trainer.eval_dataset is not None:
        trainer.save_metrics("eval", trainer.evaluate())
    save_policy(trainer, training_args.output_dir)
    say(f"SteerLM model saved to {training_args.output_dir}; sample from it with `hs2 generate --model "
        f"{training_args.output_dir} --prompt ...`")
    finish_training(trainer, training_args.output_dir, parsed, "steerlm", push, hub_model_id, save=False)


if __name__ == "__main__":
    run_stage(parse, main)
