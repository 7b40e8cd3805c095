"""Stage: DPO with TRL's stock `DPOTrainer` (paper §4: HelpSteer2 -> 7,221 pairs by helpfulness, 7 epochs, LR 2e-7,
beta 1e-3, GBS 128, weight decay 0.1, eval every 25 steps).

Input: chosen/rejected rows (e.g. from `hs2 data to-dpo`) or HelpSteer2 rows, paired on the fly the same way. The
reference model is a frozen copy of the starting model (TRL's default) or `--ref_model_name_or_path`; iterative DPO
uses the latter to keep the original model as reference while the policy moves on round by round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hs2trl.data.pairs import dpo_rows
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.runtime.args import DataArguments, load_splits, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.models import load_policy, load_policy_tokenizer
from hs2trl.runtime.resume import resumed, train_resumable
from hs2trl.runtime.say import say
from hs2trl.runtime.training import announce, evaluation_off_without_data, require_model, save_policy

COMMAND = "dpo"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class DPOArguments(DataArguments):
    pair_attribute: str = field(
        default="helpfulness",
        metadata={"help": "HelpSteer2 rows: the attribute that ranks the two responses of a prompt (ties dropped)."},
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model (default: a frozen copy of the starting model)."}
    )


def _types():
    from trl import DPOConfig, ModelConfig

    return DPOArguments, DPOConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def load_pairs(data_args: DPOArguments) -> tuple[list[dict], list[dict], list[str]]:
    """(train rows, eval rows, lines saying how HelpSteer2 rows were paired)."""
    train, evaluation = load_splits(data_args)
    notes = []
    train_rows, stats = dpo_rows(train, data_args.pair_attribute)
    if stats:
        notes.append(f"{data_args.dataset_name}: {stats.summary(data_args.pair_attribute)}")
    eval_rows = []
    if evaluation:
        eval_rows, eval_stats = dpo_rows(evaluation, data_args.pair_attribute)
        if eval_stats:
            notes.append(f"evaluation: {eval_stats.summary(data_args.pair_attribute)}")
    if not train_rows:
        raise Hs2Error(f"{data_args.dataset_name}: no preference pairs to train on")
    return train_rows, eval_rows, notes


def check(data_args, training_args, model_args) -> None:
    require_model(model_args)
    load_pairs(data_args)


def build_trainer(data_args: DPOArguments, training_args, model_args, train_rows: list[dict], eval_rows: list[dict]):
    """A stock DPOTrainer; the reference model is loaded by the same rules as the policy (same tokenizer, same
    embedding size) unless LoRA or precomputed reference log-probs make it unnecessary."""
    from datasets import Dataset
    from trl import DPOTrainer, get_peft_config

    model_path = require_model(model_args)
    tokenizer = load_policy_tokenizer(model_path)
    model = load_policy(model_path, tokenizer, model_args, training_args)
    peft_config = get_peft_config(model_args)
    ref_model = None
    if data_args.ref_model_name_or_path or (peft_config is None and not training_args.precompute_ref_log_probs):
        ref_model = load_policy(data_args.ref_model_name_or_path or model_path, tokenizer, model_args, training_args)
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def report_dropped(trainer, train_rows: list[dict]) -> None:
    """DPOTrainer drops pairs whose prompt alone fills max_length (keep_start truncation): say how many."""
    kept = len(trainer.train_dataset)
    if kept < len(train_rows):
        say(f"{len(train_rows) - kept} of {len(train_rows)} pairs dropped by DPOTrainer: prompt longer than "
            f"max_length={trainer.args.max_length}")


def train(data_args, training_args, model_args, resume: bool = False, rows=None):
    """Pairs -> trained model in training_args.output_dir (shared by `hs2 dpo` and each iterative DPO round, which
    passes its own `rows`: (train rows, eval rows, notes)). Returns the trainer."""
    train_rows, eval_rows, notes = rows if rows is not None else load_pairs(data_args)
    for note in notes:
        say(note)
    say(f"DPO on {len(train_rows)} pairs ({len(eval_rows)} for evaluation)")
    evaluation_off_without_data(training_args, bool(eval_rows))
    trainer = build_trainer(data_args, training_args, model_args, train_rows, eval_rows)
    report_dropped(trainer, train_rows)
    announce(trainer)
    train_resumable(trainer, training_args.output_dir, resume)
    if trainer.eval_dataset is not None:
        trainer.save_metrics("eval", trainer.evaluate())
    save_policy(trainer, training_args.output_dir)
    return trainer


def main(data_args, training_args, model_args) -> None:
    with output_lock(training_args.output_dir, COMMAND), continues_from(resumed(training_args.output_dir)):
        push, hub_model_id = take_push_settings(training_args)
        trainer = train(data_args, training_args, model_args, data_args.resume)
        say(f"DPO model saved to {training_args.output_dir}")
        finish_training(trainer, training_args.output_dir, (data_args, training_args, model_args), "dpo", push,
                        hub_model_id, save=False)


if __name__ == "__main__":
    run_stage(parse, main)
