"""The one place that finds a reward model's head.

A `*ForSequenceClassification` model ends in one linear layer: `score` in decoders, applied to every position's hidden
state (the model then keeps the rightmost non-pad position), or `classifier` in encoders, applied to a pooled state.
hs2trl reads a decoder's head itself, at each sequence's end-of-turn token (`end_logits`: the token the RM
was trained on, for packed and padded batches alike), and folds the weights of either head into one scalar reward
(`rewards.export_scalar_model`, `rewards.ScalarRewardModel`).
"""

from __future__ import annotations

import torch
from torch import nn

from hs2trl.packing import base_model, capture_output, is_packed, model_inputs
from hs2trl.runtime.errors import Hs2Error

HEAD_NAMES = ("score", "classifier")  # where *ForSequenceClassification models keep their linear head
PER_POSITION_HEADS = ("score",)  # heads whose output exists at every position, so it can be read at any token


def reward_head(model: nn.Module, *, per_position: bool = False, required: bool = True) -> nn.Module | None:
    """The linear head of a `*ForSequenceClassification` model, inside DDP/DeepSpeed/compile and PEFT wrappers.

    Under PEFT it is PEFT's wrapper of the head (the trainable copy runs there, so a forward hook must sit on it).
    `per_position`: only a decoder's `score` (what `end_logits` reads). Without a head: a one-line Hs2Error
    naming the model, or None when not `required`."""
    base = base_model(model)
    for name in PER_POSITION_HEADS if per_position else HEAD_NAMES:
        head = getattr(base, name, None)
        if _is_linear(head):
            return head
    if not required:
        return None
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or "model"
    raise Hs2Error(f"{name} ({type(base).__name__}): no linear `score` head; expected a decoder "
                   "*ForSequenceClassification model")


def _is_linear(module) -> bool:
    """A linear layer, or PEFT's wrapper of one (`modules_to_save` copy, or a LoRA layer on the head)."""
    inner = (module, getattr(module, "original_module", None), getattr(module, "base_layer", None))
    return any(isinstance(m, nn.Linear) for m in inner)


def end_logits(model: torch.nn.Module, batch: dict, head: torch.nn.Module | None = None) -> torch.Tensor:
    """Head outputs `[B, k]` at each sequence's last token (`end_index`), for a padded or a packed batch.

    The head is read through a forward hook so that PEFT, DeepSpeed and DDP wrappers run their own forward. Without
    `head`, the decoder's `score` head (`rm.head.reward_head`)."""
    if head is None:
        head = reward_head(model, per_position=True)
    with capture_output(head) as captured:
        model(**model_inputs(batch), use_cache=False)
    per_position = captured["out"]  # [B, T, k]
    end = batch["end_index"]
    if is_packed(batch):
        return per_position[0, end]
    return per_position[torch.arange(end.shape[0], device=end.device), end]
