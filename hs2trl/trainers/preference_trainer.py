"""`PreferenceRewardTrainer`: TRL's `RewardTrainer` with the preference-strength losses of HelpSteer2-Preference
(arXiv 2410.01257): with m = |preference strength| (a row's `margin` column),

    bt         -log σ(r_c - r_r)
    margin_bt  -log σ(r_c - r_r - m)
    scaled_bt  -m · log σ(r_c - r_r)

each averaged over the pairs of a batch, as NeMo-Aligner's `bt_loss_func` (one pair per micro-batch, averaged).

What stays TRL's: `__init__` (a 1-output `AutoModelForSequenceClassification`, the head seeded, PEFT, pad token,
chat template), the pair's two responses in one batch (chosen first, then rejected), the `margin` column, the length
filter (pairs over max_length are dropped; here counted aloud), logging, the accuracy / margin / reward metrics and
model cards. What differs, and why:
- a conversational pair is tokenised with `encode_conversation`, ending on the end-of-turn token: the token every
  hs2trl reward reading uses (TRL's tokenisation keeps the template's trailing newline, so the head would read it);
- batches may be padding-free (`padding_free`, as the regression trainer), so the rewards are read with `end_logits`
  at each sequence's end, not from the model's own pooled logits;
- hence `compute_loss` is overridden: TRL's, with that reading and the configured loss term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from datasets import Dataset
from transformers.data.data_collator import DataCollatorMixin
from trl import RewardTrainer, is_conversational

from hs2trl.data.chat import encode_conversation
from hs2trl.packing import (
    attention_implementation,
    count_tokens,
    model_inputs,
    pack_sequences,
    pad_sequences,
    prepare_for_packing,
)
from hs2trl.rm.head import end_logits, reward_head
from hs2trl.runtime.say import say
from hs2trl.trainers.preference_config import PREFERENCE_LOSSES, PreferenceRewardConfig

DEFAULT_STRENGTH = 1.0  # a pair without a `margin` column


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, strength: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-pair loss `[B]` from the chosen and rejected rewards `[B]` and the strengths m `[B]` (module doc)."""
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(f"loss: '{loss}' is not one of {', '.join(PREFERENCE_LOSSES)}")
    delta = chosen - rejected
    if loss == "margin_bt":
        return -F.logsigmoid(delta - strength)
    nll = -F.logsigmoid(delta)
    return strength * nll if loss == "scaled_bt" else nll


@dataclass
class DataCollatorForPreferencePairs(DataCollatorMixin):
    """Batches `{chosen_ids, rejected_ids, margin?}` rows as TRL's `DataCollatorForPreference` does (the chosen
    sequences, then the rejected ones, in one batch), padded or padding-free, with `end_index` marking each sequence's
    last token and `margin` always present (1 where a row has none)."""

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(e[key], dtype=torch.long) for key in ("chosen_ids", "rejected_ids") for e in examples]
        margin = torch.tensor([float(e.get("margin", DEFAULT_STRENGTH)) for e in examples], dtype=torch.float)
        # margin first: Trainer's find_batch_size reads the first tensor (a packed row has batch size 1).
        if self.padding_free:
            return {"margin": margin, **pack_sequences(ids)}
        return {"margin": margin, **pad_sequences(ids, self.pad_token_id, self.pad_to_multiple_of)}


class PreferenceRewardTrainer(RewardTrainer):
    """Bradley-Terry reward model trainer with preference strengths: bt, margin_bt or scaled_bt (`args.loss`).

    `train_dataset`/`eval_dataset` rows: TRL's preference format (`prompt` + `chosen`/`rejected`, conversational or
    text, or tokenised `chosen_ids`/`rejected_ids`) with an optional `margin` column holding m = |strength| (see
    `hs2trl.data.preference.preference_pairs`). The model has one output: a k-output RM is folded to one first
    (`hs2 train-rm --init-head`); TRL refuses a model object with `num_labels != 1`.
    """

    _tag_names = ["trl", "reward-trainer", "hs2trl", "helpsteer2-preference"]
    _name = "Preference-strength reward"

    def __init__(self, model, args: PreferenceRewardConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), peft_config=None, **kwargs):
        args = args or PreferenceRewardConfig("preference-reward-model")
        if peft_config is not None:
            # A fresh or folded head must train in full (TRL only recommends this), and is saved with the adapter.
            peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | {"score"})
        self.length_report: dict[str, dict[str, int]] = {}
        super().__init__(model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                         peft_config=peft_config, **kwargs)
        # Padding-free needs attention that keeps packed sequences apart (see hs2trl.packing).
        self.padding_free = bool(args.padding_free) and prepare_for_packing(self.model)
        if args.padding_free and not self.padding_free:
            say(f"padding_free: attention implementation '{attention_implementation(self.model)}' cannot separate "
                "packed sequences; training with padded batches")
        if data_collator is None:  # TRL's collator has no end_index and no packed rows
            self.data_collator = DataCollatorForPreferencePairs(
                self.processing_class.pad_token_id, self.padding_free, args.pad_to_multiple_of
            )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not isinstance(dataset, Dataset):  # streamed: TRL's own preparation
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        columns = dataset.column_names
        if not {"chosen_ids", "rejected_ids"} <= set(columns) and len(dataset) and is_conversational(dataset[0]):
            with PartialState().main_process_first():
                dataset = dataset.map(
                    lambda row: _tokenize_pair(processing_class, row),
                    remove_columns=[c for c in columns if c != "margin"],
                    num_proc=args.dataset_num_proc,
                    desc=f"Tokenizing {dataset_name} dataset",
                )
        pairs = len(dataset)
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # TRL's max_length filter
        dropped = pairs - len(dataset)
        self.length_report[dataset_name] = {"pairs": pairs, "over_max_length": dropped}
        if dropped:
            say(f"{dataset_name}: dropped {dropped} of {pairs} pairs longer than max_length={args.max_length} "
                "tokens (TRL's RewardTrainer filters them; raise --max_length to keep them)")
        if "length" not in dataset.column_names:  # what group_by_length reads, instead of every row's ids
            dataset = dataset.map(lambda row: {"length": len(row["chosen_ids"]) + len(row["rejected_ids"])},
                                  desc="Measuring lengths")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length"]

    def rewards(self, model, inputs) -> torch.Tensor:
        """`[2B]` rewards: the chosen sequences' then the rejected ones', read at each sequence's last token.

        `[:, 0]` is the reward because the model has exactly one output (TRL enforces `num_labels == 1`): TRL's reward
        functions read only `logits[:, 0]` of any sequence-classification model, which for a k-head SteerLM RM would
        silently be its first attribute, hence the fold to one output before training."""
        if "end_index" in inputs:
            logits = end_logits(model, inputs, reward_head(self.accelerator.unwrap_model(model), per_position=True))
        else:  # a caller's own collator (e.g. TRL's): the model's reading, the rightmost non-pad token
            logits = model(**model_inputs(inputs), use_cache=False).logits
        return logits[:, 0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL's RewardTrainer.compute_loss (1.16) with two changes, hence the override (TRL has no hook for either):
        # the rewards come from `self.rewards` (padded or packed batches) and the loss term is `args.loss`.
        mode = "train" if self.model.training else "eval"
        rewards = self.rewards(model, inputs)
        rewards_chosen, rewards_rejected = torch.chunk(rewards.float(), chunks=2)
        loss = preference_loss(rewards_chosen, rewards_rejected, inputs["margin"], self.args.loss).mean()

        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        if mode == "train":
            num_tokens_in_batch = self.accelerator.gather_for_metrics(count_tokens(inputs)).sum().item()
            self._total_train_tokens += num_tokens_in_batch // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        with torch.no_grad():  # TRL's metrics, the same names
            all_rewards = self.accelerator.gather(rewards.detach())
            self._metrics[mode]["min_reward"].append(all_rewards.min().item())
            self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
            self._metrics[mode]["max_reward"].append(all_rewards.max().item())
            mean_accuracy = (rewards_chosen > rewards_rejected).float().mean()
            self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(mean_accuracy).mean().item())
            mean_margin = (rewards_chosen - rewards_rejected).mean()
            self._metrics[mode]["margin"].append(self.accelerator.gather_for_metrics(mean_margin).mean().item())

        return (loss, {"logits": rewards[:, None]}) if return_outputs else loss


def _tokenize_pair(tokenizer, row) -> dict[str, list[int]]:
    """A conversational pair (explicit `prompt` or not) -> ids ending on the end-of-turn token."""
    prompt = list(row.get("prompt") or [])
    return {f"{key}_ids": encode_conversation(tokenizer, prompt + list(row[key])) for key in ("chosen", "rejected")}
