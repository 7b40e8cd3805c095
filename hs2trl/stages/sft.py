"""Stage: supervised fine-tuning with TRL's stock `SFTTrainer` (paper §4: Open Assistant or Daring Anteater, constant
LR 2e-6, a checkpoint every 200 steps). Every input layout becomes chat messages first (`data/conversations.py`):
Daring Anteater `conversations`, OpenAssistant message trees, HelpSteer2 prompt/response rows, or `messages`."""

from __future__ import annotations

from dataclasses import dataclass, field

from hs2trl.data.conversations import sft_examples
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.runtime.args import DataArguments, load_splits, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.models import load_policy, load_policy_tokenizer
from hs2trl.runtime.resume import resumed, train_resumable
from hs2trl.runtime.say import say
from hs2trl.runtime.training import announce, evaluation_off_without_data, require_model, save_policy

COMMAND = "sft"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class SFTDataArguments(DataArguments):
    min_helpfulness: float | None = field(
        default=None,
        metadata={"help": "HelpSteer2-format rows: train only on responses with at least this helpfulness (the rest "
                          "are counted out)."},
    )


def _types():
    from trl import ModelConfig, SFTConfig

    return SFTDataArguments, SFTConfig, ModelConfig


def keep_helpful(records, min_helpfulness: float | None):
    """HelpSteer2-format rows whose `helpfulness` reaches the threshold (rows without that column, e.g. Daring
    Anteater, are all kept); returns (rows, how many were left out)."""
    if min_helpfulness is None:
        return records, 0
    from hs2trl.data.helpsteer2 import attribute_scores

    kept = [r for r in records
            if "helpfulness" not in r.data or (attribute_scores(r, ["helpfulness"])[0] or 0) >= min_helpfulness]
    return kept, len(records) - len(kept)


def parse(argv):
    return parse_stage_args(_types(), argv)


def load_examples(data_args) -> tuple[list[dict], list[dict], list[str]]:
    train, evaluation = load_splits(data_args)
    notes = []
    if data_args.min_helpfulness is not None:
        (train, n_train), (evaluation, n_eval) = (keep_helpful(rs, data_args.min_helpfulness)
                                                  for rs in (train, evaluation))
        notes.append(f"{n_train} training and {n_eval} evaluation rows left out: helpfulness below "
                     f"{data_args.min_helpfulness}")
    train_rows, note = sft_examples(train)
    notes += [note] if note else []
    eval_rows = []
    if evaluation:
        eval_rows, eval_note = sft_examples(evaluation)
        notes += [f"evaluation: {eval_note}"] if eval_note else []
    if not train_rows:
        raise Hs2Error(f"{data_args.dataset_name}: no conversations to train on")
    return train_rows, eval_rows, notes


def check_assistant_only_loss(training_args, tokenizer) -> None:
    """`assistant_only_loss` needs `{% generation %}` markers: TRL patches a few known templates, the rest must bring
    their own. Fail before launching, in one line, rather than deep inside the trainer."""
    if not training_args.assistant_only_loss:
        return
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise Hs2Error(
            "assistant_only_loss: this chat template has no {% generation %} markers and TRL has no training version "
            "of it: pass --chat_template_path with a .jinja template that has them, or --assistant_only_loss false"
        ) from None


def check(data_args, training_args, model_args) -> None:
    model = require_model(model_args)
    load_examples(data_args)
    check_assistant_only_loss(training_args, load_policy_tokenizer(model, training_args.chat_template_path))


def main(data_args, training_args, model_args) -> None:
    with output_lock(training_args.output_dir, COMMAND), continues_from(resumed(training_args.output_dir)):
        train(data_args, training_args, model_args)


def train(data_args, training_args, model_args) -> None:
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    push, hub_model_id = take_push_settings(training_args)
    model_path = require_model(model_args)
    train_rows, eval_rows, notes = load_examples(data_args)
    for note in notes:
        say(note)
    say(f"SFT on {len(train_rows)} conversations ({len(eval_rows)} for evaluation)")
    evaluation_off_without_data(training_args, bool(eval_rows))
    tokenizer = load_policy_tokenizer(model_path, training_args.chat_template_path)
    check_assistant_only_loss(training_args, tokenizer)
    training_args.chat_template_path = None  # applied above; TRL would clone it a second time
    model = load_policy(model_path, tokenizer, model_args, training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    announce(trainer)
    train_resumable(trainer, training_args.output_dir, data_args.resume)
    if trainer.eval_dataset is not None:
        trainer.save_metrics("eval", trainer.evaluate())
    save_policy(trainer, training_args.output_dir)
    say(f"SFT model saved to {training_args.output_dir}")
    finish_training(trainer, training_args.output_dir, (data_args, training_args, model_args), "sft", push,
                    hub_model_id, save=False)


if __name__ == "__main__":
    run_stage(parse, main)
