"""`RegressionRewardTrainer`: TRL's `RewardTrainer` with a k-output head and a masked MSE loss (SteerLM RM).

Differences from the stock trainer, all here: the model keeps `num_labels = k`, rows are `{messages, labels}` (one
sequence each, not chosen/rejected pairs), an over-long row is truncated from the left or dropped (counted and
reported, never silent), the loss is MSE over the attribute scores present (a missing score is NaN and masked), and
evaluation reports per-attribute MSE and Pearson r. Logging, checkpointing, model cards and activation offloading are
the stock trainer's.
"""


import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import set_seed
from transformers.data.data_collator import DataCollatorMixin
from trl import RewardTrainer

from hs2trl.data.chat import encode_conversation
from hs2trl.packing import attention_implementation, count_tokens, pack_sequences, pad_sequences, prepare_for_packing
from hs2trl.rm.head import end_logits, reward_head
from hs2trl.rm.modeling import init_reward_model
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.models import load_tokenizer
from hs2trl.runtime.say import say
from hs2trl.trainers.regression_config import RegressionRewardConfig
from hs2trl.trl_internals import BaseTrainer, disable_dropout_in_model, get_act_offloading_ctx_manager


@dataclass
class DataCollatorForRegression(DataCollatorMixin):
    """Batches `{input_ids, labels}` rows; `end_index` marks each sequence's last token (the one the head reads).

    Padded: `input_ids`/`attention_mask` `[B, T]`, `end_index[b] = len_b - 1`.
    Padding-free: one row `[1, sum(len)]` with `position_ids` restarting at 0 per sequence, the varlen boundaries
    (`cu_seq_lens_q/k`, `max_length_q/k`) and `end_index` the flat positions of the sequence ends
    (`hs2trl.packing.pack_sequences`).
    """

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        labels = torch.tensor([[math.nan if v is None else v for v in e["labels"]] for e in examples],
                              dtype=torch.float)
        # labels first: Trainer's find_batch_size reads the first tensor (a packed input_ids row has batch size 1).
        if self.padding_free:
            return {"labels": labels, **pack_sequences(ids)}
        return {"labels": labels, **pad_sequences(ids, self.pad_token_id, self.pad_to_multiple_of)}


def masked_mse(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the (row, attribute) entries whose label is present (not NaN)."""
    present = ~torch.isnan(labels)
    err = torch.where(present, predictions - torch.nan_to_num(labels), torch.zeros_like(predictions))
    return (err**2).sum() / present.sum().clamp(min=1)


def regression_metrics(eval_pred, attributes: list[str]) -> dict[str, float]:
    """Per-attribute MSE and Pearson r over the rows that have that attribute."""
    from scipy.stats import pearsonr

    preds = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, len(attributes))
    labels = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1, len(attributes))
    metrics = {}
    for j, name in enumerate(attributes):
        present = ~np.isnan(labels[:, j])
        p, y = preds[present, j], labels[present, j]
        metrics[f"mse_{name}"] = float(np.mean((p - y) ** 2)) if len(y) else math.nan
        constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(p) == 0
        metrics[f"pearson_{name}"] = math.nan if constant else float(pearsonr(p, y).statistic)
    return metrics


class RegressionRewardTrainer(RewardTrainer):
    """SteerLM regression reward model trainer: one linear head, k outputs, masked MSE.

    `train_dataset`/`eval_dataset` rows: `{"messages": [...chat ending on the assistant turn], "labels": [k floats,
    NaN where missing]}` (see `hs2trl.data.helpsteer2.regression_examples`), or already tokenised
    `{input_ids, labels}`.
    """

    _tag_names = ["trl", "reward-trainer", "hs2trl", "steerlm"]
    _name = "SteerLM regression reward"

    def __init__(
        self,
        model,
        args: RegressionRewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        args = args or RegressionRewardConfig("steerlm-reward-model")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        set_seed(args.seed)  # the new head is random: seed before creating it

        if processing_class is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            processing_class = load_tokenizer(name, args.chat_template_path)
        if isinstance(model, str):
            model = init_reward_model(model, processing_class, args.attributes, **(args.model_init_kwargs or {}))
        elif model.config.num_labels != len(args.attributes):
            raise Hs2Error(
                f"the model has {model.config.num_labels} outputs but {len(args.attributes)} attributes are configured"
            )
        model.config.pad_token_id = processing_class.pad_token_id

        if peft_config is not None:
            from peft import get_peft_model

            # The head is new: train it fully and save it with the adapter.
            peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | {"score"})
            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()
        if args.disable_dropout:
            disable_dropout_in_model(model)

        self.length_report: dict[str, dict[str, int]] = {}
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, processing_class, args, k) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")

        # Padding-free needs attention that keeps packed sequences apart (see hs2trl.packing).
        self.padding_free = bool(args.padding_free) and prepare_for_packing(model)
        if args.padding_free and not self.padding_free:
            say(f"padding_free: attention implementation '{attention_implementation(model)}' cannot separate "
                "packed sequences; training with padded batches")
        if data_collator is None:
            data_collator = DataCollatorForRegression(
                processing_class.pad_token_id, self.padding_free, args.pad_to_multiple_of
            )
        if compute_metrics is None:
            attributes = list(args.attributes)
            compute_metrics = lambda p: regression_metrics(p, attributes)  # noqa: E731

        # RewardTrainer.__init__ is skipped on purpose: it forces num_labels=1 and tokenises chosen/rejected pairs.
        BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # The state RewardTrainer.__init__ would have set after Trainer.__init__.
        self.can_return_loss = True
        self.label_names = ["labels"]
        self.model_accepts_loss_kwargs = False  # we compute the loss: let Trainer scale it for grad accumulation
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self.maybe_activation_offload_context = (
            get_act_offloading_ctx_manager(model=self.model) if args.activation_offloading
            else contextlib.nullcontext()
        )
        self.model.add_model_tags(self._tag_names)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "input_ids" in dataset.column_names:
            if "length" not in dataset.column_names:  # group_by_length reads it instead of every row's ids
                dataset = dataset.map(lambda row: {"length": len(row["input_ids"])}, desc="Measuring lengths")
            return dataset
        with PartialState().main_process_first():
            # One pass: tokenise once and record the length (the length limit and group_by_length read the column).
            dataset = dataset.map(
                lambda row: _tokenize_row(processing_class, row["messages"]),
                remove_columns=[c for c in dataset.column_names if c != "labels"],
                num_proc=args.dataset_num_proc,
                desc=f"Tokenizing {dataset_name} dataset",
            )
            dataset = self._apply_length_limit(dataset, args, dataset_name)
        return dataset

    def _apply_length_limit(self, dataset, args, dataset_name):
        """Truncate from the left or drop rows over max_length; the count is always reported."""
        if args.max_length is None:
            return dataset
        limit = args.max_length
        too_long = sum(1 for n in dataset["length"] if n > limit)
        self.length_report[dataset_name] = {"rows": len(dataset), "over_max_length": too_long}
        if not too_long:
            return dataset
        if args.truncation_mode == "drop":
            dataset = dataset.filter(lambda row: row["length"] <= limit, desc="Dropping over-long rows")
            action = "dropped"
        else:
            dataset = dataset.map(
                lambda row: {"input_ids": row["input_ids"][-limit:], "length": min(row["length"], limit)},
                desc="Truncating rows",
            )
            action = "truncated from the left (prompt first; the response end is kept)"
        say(f"{dataset_name}: {too_long} of {self.length_report[dataset_name]['rows']} rows are longer than "
            f"max_length={limit} tokens and were {action} (truncation_mode={args.truncation_mode})")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "length"]

    def end_logits(self, model, inputs) -> torch.Tensor:
        """Head outputs `[B, k]` at each sequence's last token (the end-of-turn token)."""
        return end_logits(model, inputs, reward_head(self.accelerator.unwrap_model(model), per_position=True))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        predictions = self.end_logits(model, inputs)
        loss = masked_mse(predictions.float(), inputs["labels"])
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(count_tokens(inputs)).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"logits": predictions}) if return_outputs else loss


def _tokenize_row(tokenizer, messages) -> dict[str, Any]:
    ids = encode_conversation(tokenizer, messages)
    return {"input_ids": ids, "length": len(ids)}
