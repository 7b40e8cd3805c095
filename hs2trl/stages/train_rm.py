"""Stage: train a reward model. The loss picks the trainer (`--loss`):

- `regression`: HelpSteer-format rows (attribute scores) train the SteerLM regression RM (`RegressionRewardTrainer`);
- `bt`, `margin_bt`, `scaled_bt`: preference pairs (HelpSteer2-/HelpSteer3-Preference rows, or chosen/rejected rows
  with an optional `margin`) train a 1-output RM with HelpSteer2-Preference's losses (`PreferenceRewardTrainer`),
  starting from a base LM (a fresh head), a 1-output RM (its own head: regression, then BT) or one head or fold of a
  k-output RM (`--init-head`);
- unset: detected from the data, as before: regression for HelpSteer rows, TRL's stock Bradley-Terry
  `RewardTrainer` for chosen/rejected rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from hs2trl.data.helpsteer2 import detect_format, regression_examples, validate_messages
from hs2trl.data.records import Record
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.rm.init_head import starting_head, starting_model
from hs2trl.runtime.args import DataArguments, load_splits, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.hardware import precision_note
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.process import is_main_process
from hs2trl.runtime.resume import resumed, train_resumable
from hs2trl.runtime.say import say
from hs2trl.runtime.training import save_final_model
from hs2trl.trainers.preference_config import PREFERENCE_LOSSES
from hs2trl.trainers.regression_config import RegressionRewardConfig

COMMAND = "train-rm"  # the hs2 command that runs this stage (named in lock holder records)
LOSSES = ("regression", *PREFERENCE_LOSSES)
STOCK_BT = "stock-bt"  # --loss unset on chosen/rejected rows: TRL's own RewardTrainer
# The field that makes a row a preference pair, per `preference_format` (named in one-line errors).
PAIR_FIELDS = {"helpsteer2-preference": "preference_strength", "helpsteer3-preference": "overall_preference",
               "chosen-rejected": "chosen"}


@dataclass
class RewardDataArguments(DataArguments):
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "With no evaluation split or file: hold out this fraction of prompts (pairs kept "
                          "together)."},
    )


@dataclass
class TrainRewardConfig(RegressionRewardConfig):
    """The regression RM's settings, plus the loss (which trainer runs) and the head a pairwise loss starts from."""

    loss: str | None = field(
        default=None,
        metadata={
            "help": "'regression' (HelpSteer rows: attribute scores), or 'bt', 'margin_bt', 'scaled_bt' (preference "
            "pairs with strengths m: -log σ(Δ), -log σ(Δ - m), -m · log σ(Δ), HelpSteer2-Preference). Unset: "
            "regression for HelpSteer rows, TRL's Bradley-Terry for chosen/rejected rows.",
            "choices": list(LOSSES),
        },
    )
    init_head: str | None = field(
        default=None,
        metadata={
            "help": "With a pairwise loss from a k-output reward model: the output to start from (e.g. helpfulness) "
            "or a weight preset / numbers to fold the heads into one (e.g. goodness). A 1-output RM starts from its "
            "own head, a base LM from a fresh one."
        },
    )


def _model_config_type():
    from trl import ModelConfig

    return ModelConfig


def parse(argv):
    return parse_stage_args((RewardDataArguments, TrainRewardConfig, _model_config_type()), argv)


def preference_examples(records: list[Record]) -> list[dict]:
    """chosen/rejected rows (strings or chat messages, optional prompt) for the stock Bradley-Terry trainer."""
    rows = []
    for r in records:
        row = {}
        for key in ("prompt", "chosen", "rejected"):
            if key not in r.data:
                if key == "prompt":
                    continue
                raise Hs2Error(f"{r.where(key)}: missing column")
            value = r.data[key]
            if isinstance(value, str):
                if not value.strip():
                    raise Hs2Error(f"{r.where(key)}: empty text")
            else:
                validate_messages(value, r, key)
            row[key] = value
        rows.append(row)
    return rows


def training_loss(records: list[Record], loss: str | None) -> str:
    """What trains on these rows: 'regression', STOCK_BT (--loss unset on chosen/rejected rows) or a pairwise loss.
    A --loss that does not fit the rows is one line naming the file, the row and the field."""
    from hs2trl.data.preference import preference_format

    if not records:
        raise Hs2Error("dataset is empty")
    pair_format = preference_format(records)
    first = records[0]
    pairwise = ", ".join(PREFERENCE_LOSSES)
    if loss is None:  # the format decides, as before --loss existed
        if detect_format(records) == "preference":
            return STOCK_BT
        if pair_format is None or pair_format == "chosen-rejected":
            return "regression"
        raise Hs2Error(f"{first.where(PAIR_FIELDS[pair_format])}: {pair_format} rows carry preference strengths: "
                       f"choose a pairwise loss with --loss ({pairwise})")
    if loss == "regression":
        if pair_format is not None:
            raise Hs2Error(f"{first.where(PAIR_FIELDS[pair_format])}: --loss regression needs HelpSteer rows with "
                           f"attribute scores, but this is a {pair_format} pair; use --loss {pairwise}")
        return loss
    if pair_format is None:
        found = "response" if "response" in first.data else next(iter(first.data), "response_1")
        raise Hs2Error(f"{first.where(found)}: --loss {loss} needs preference pairs (HelpSteer2-/HelpSteer3-"
                       "Preference or chosen/rejected rows), but this row is not one (a regression row has a "
                       "response and attribute scores); use --loss regression")
    return loss


def pair_examples(records: list[Record]) -> tuple[list[dict], object]:
    """Preference pairs -> TRL's conversational preference rows, m = |strength| in TRL's `margin` column."""
    from hs2trl.data.preference import preference_pairs, trl_row

    pairs, stats = preference_pairs(records)
    return [trl_row(p) for p in pairs], stats


def check(data_args, training_args, model_args) -> None:
    """Parse and validate everything a run needs, without loading a model's weights."""
    train, evaluation = load_splits(data_args)
    loss = training_loss(train, training_args.loss)
    for records in (train, evaluation):
        if not records:
            continue
        if loss == "regression":
            regression_examples(records, training_args.attributes)
        elif loss == STOCK_BT:
            preference_examples(records)
        else:
            training_loss(records, loss)  # an evaluation file of the other kind is one line too
            pair_examples(records)
    if loss in PREFERENCE_LOSSES:
        starting_head(model_args.model_name_or_path, training_args.init_head, strict=False)
    elif training_args.init_head is not None:
        run = "--loss regression" if loss == "regression" else "TRL's stock Bradley-Terry run (--loss unset)"
        raise Hs2Error(f"init_head: applies to a pairwise loss ({', '.join(PREFERENCE_LOSSES)}), not to {run}")


def build_trainer(data_args, training_args, model_args):
    from datasets import Dataset
    from trl import get_peft_config

    from hs2trl.runtime.models import load_tokenizer
    from hs2trl.runtime.pretrained import resolve_model
    from hs2trl.trainers.regression_trainer import RegressionRewardTrainer

    train, evaluation = load_splits(data_args)
    loss = training_loss(train, training_args.loss)
    model_path = resolve_model(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, training_args.chat_template_path)
    peft_config = get_peft_config(model_args)
    model_init_kwargs = dict(training_args.model_init_kwargs or {})
    for key in ("dtype", "attn_implementation"):
        if getattr(model_args, key, None) is not None:
            model_init_kwargs.setdefault(key, getattr(model_args, key))
    training_args.model_init_kwargs = model_init_kwargs or None
    if not evaluation and training_args.eval_strategy != "no":
        say("no evaluation data: evaluation and best-checkpoint selection are off")
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False

    if loss == STOCK_BT:
        return _bradley_terry_trainer(training_args, model_path, tokenizer, peft_config, train, evaluation)
    if loss in PREFERENCE_LOSSES:
        return _preference_trainer(training_args, model_args.model_name_or_path, tokenizer, peft_config, train,
                                   evaluation)
    attributes = training_args.attributes
    return RegressionRewardTrainer(
        model=model_path,
        args=training_args,
        train_dataset=Dataset.from_list(regression_examples(train, attributes)),
        eval_dataset=Dataset.from_list(regression_examples(evaluation, attributes)) if evaluation else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def preference_config(training_args):
    """The stage's arguments as a `PreferenceRewardConfig` (every field they share; an unset best-model metric stays
    the config's eval_loss)."""
    from hs2trl.trainers.preference_config import PreferenceRewardConfig

    values = {f.name: getattr(training_args, f.name) for f in fields(PreferenceRewardConfig)
              if f.init and hasattr(training_args, f.name)}
    if values.get("metric_for_best_model") is None:
        values.pop("metric_for_best_model", None)
    return PreferenceRewardConfig(**values)


def _preference_trainer(training_args, model_name, tokenizer, peft_config, train, evaluation):
    """PreferenceRewardTrainer on preference pairs; says which head it starts from and what the pairs are."""
    from datasets import Dataset

    from hs2trl.trainers.preference_trainer import PreferenceRewardTrainer

    args = preference_config(training_args)
    head = starting_head(model_name, training_args.init_head)
    model = starting_model(model_name, training_args.init_head, args.model_init_kwargs)
    if not isinstance(model, str):
        args.model_init_kwargs = None  # the model is loaded already (TRL would warn that they are ignored)
    datasets = {}
    for name, records in (("training", train), ("evaluation", evaluation)):
        if not records:
            continue
        rows, stats = pair_examples(records)
        say(f"{name}: {stats.pairs} preference pairs from {stats.rows} rows ({stats.ties_dropped} ties dropped; "
            f"strengths {_histogram(stats.strengths)})")
        datasets[name] = Dataset.from_list(rows)
    if "training" not in datasets or not len(datasets["training"]):
        raise Hs2Error(f"{train[0].source}: no preference pairs to train on (every row is a tie)")
    say(f"loss {args.loss}: starting from {head}")
    trainer = PreferenceRewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets["training"],
        eval_dataset=datasets.get("evaluation"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if len(trainer.train_dataset) == 0:
        raise Hs2Error(f"every training pair is longer than max_length={args.max_length} tokens")
    return trainer


def _histogram(strengths: dict) -> str:
    return ", ".join(f"{k:+d}: {n}" for k, n in sorted(strengths.items())) or "none"


def _bradley_terry_trainer(training_args, model_path, tokenizer, peft_config, train, evaluation):
    """TRL's stock RewardTrainer on chosen/rejected rows; the pairs it filters out by length are counted aloud."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    say("chosen/rejected data: training a Bradley-Terry reward model with TRL's RewardTrainer")
    stock_args = RewardConfig(**{f.name: getattr(training_args, f.name) for f in fields(RewardConfig) if f.init})
    if stock_args.train_sampling_strategy == "group_by_length":
        # The stock collator's rows carry chosen_ids/rejected_ids, not the input_ids that length grouping reads.
        stock_args.train_sampling_strategy = "random"
        say("length-grouped batches need HelpSteer-format data: using random sampling")
    trainer = RewardTrainer(
        model=model_path,
        args=stock_args,
        train_dataset=Dataset.from_list(preference_examples(train)),
        eval_dataset=Dataset.from_list(preference_examples(evaluation)) if evaluation else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    for name, records, dataset in (("training", train, trainer.train_dataset),
                                   ("evaluation", evaluation, trainer.eval_dataset)):
        dropped = len(records) - (len(dataset) if dataset is not None else 0)
        if records and dropped:
            say(f"dropped {dropped} of {len(records)} {name} pairs longer than max_length="
                f"{stock_args.max_length} tokens (TRL's RewardTrainer filters them; raise --max_length to keep them)")
    if len(trainer.train_dataset) == 0:
        raise Hs2Error(f"every training pair is longer than max_length={stock_args.max_length} tokens")
    return trainer


def print_summary(trainer, metrics: dict, evaluation_rows) -> None:
    """The closing table: per-attribute validation MSE / Pearson r, and the scores of two example responses."""
    from rich.console import Console
    from rich.table import Table

    from hs2trl.rm.scoring import score_conversations

    console = Console()
    if "eval_accuracy" in metrics:  # a Bradley-Terry RM: TRL's pairwise metrics
        say(f"validation: pairwise accuracy {metrics['eval_accuracy']:.3f}, reward margin "
            f"{metrics.get('eval_margin', math.nan):.3f}, eval loss {metrics.get('eval_loss', math.nan):.4f}")
    attributes = list(trainer.args.attributes) if hasattr(trainer.args, "attributes") else []
    if metrics and attributes:
        table = Table(title="Validation: per-attribute MSE and Pearson r")
        table.add_column("attribute")
        table.add_column("MSE", justify="right")
        table.add_column("Pearson r", justify="right")
        for name in attributes:
            mse, r = metrics.get(f"eval_mse_{name}", math.nan), metrics.get(f"eval_pearson_{name}", math.nan)
            table.add_row(name, f"{mse:.3f}", f"{r:.3f}")
        table.add_row("all (eval_loss)", f"{metrics.get('eval_loss', math.nan):.3f}", "")
        console.print(table)
    if not attributes or not evaluation_rows:
        return
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    examples = evaluation_rows[:2]
    scores = score_conversations(model, trainer.processing_class, [e["messages"] for e in examples])
    table = Table(title="Two example responses: predicted (gold)")
    table.add_column("response")
    for name in attributes:
        table.add_column(name, justify="right")
    for example, predicted in zip(examples, scores.tolist()):
        text = example["messages"][-1]["content"].replace("\n", " ")
        cells = [f"{p:.2f} ({'-' if math.isnan(g) else int(g)})" for p, g in zip(predicted, example["labels"])]
        table.add_row(text[:60] + ("..." if len(text) > 60 else ""), *cells)
    console.print(table)


def main(data_args, training_args, model_args) -> None:
    with output_lock(training_args.output_dir, COMMAND), continues_from(resumed(training_args.output_dir)):
        train(data_args, training_args, model_args)


def train(data_args, training_args, model_args) -> None:
    push, hub_model_id = take_push_settings(training_args)
    trainer = build_trainer(data_args, training_args, model_args)
    say(f"training {type(trainer).__name__} on {trainer.accelerator.num_processes} process(es)"
        f"{precision_note(trainer.args)}")
    train_resumable(trainer, training_args.output_dir, data_args.resume)
    metrics = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    save_final_model(trainer, training_args.output_dir)
    if is_main_process():
        _, evaluation = load_splits(data_args)
        rows = (regression_examples(evaluation[:2], training_args.attributes)
                if hasattr(trainer.args, "attributes") and evaluation else [])
        print_summary(trainer, metrics, rows)
        say(f"reward model saved to {training_args.output_dir}")
    finish_training(trainer, training_args.output_dir, (data_args, training_args, model_args), "train_rm", push,
                    hub_model_id, save=False)


if __name__ == "__main__":
    run_stage(parse, main)
