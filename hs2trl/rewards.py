"""From five attribute predictions to one reward: folded linear heads, normalisation, and a scalar model for PPO.

A weighted sum of linear heads is itself one linear head: `w·(W h) = (wᵀW) h`. So a 5-head SteerLM RM becomes a
1-output model with the same backbone and a folded head, usable by stock TRL trainers, RewardBench and pipelines.
Normalisation `(r - mean) / std` needs a bias, which Llama-family heads lack, so it lives in `ScalarRewardModel`
(used for PPO) and in the `hs2trl_reward.json` file stored next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .attributes import resolve_weights

REWARD_INFO_FILE = "hs2trl_reward.json"


def folded_head_weight(model, weights: Sequence[float]) -> torch.Tensor:
    """`[1, hidden]` = wᵀW for the model's `[k, hidden]` score head."""
    head = model.score.weight
    w = torch.as_tensor(weights, dtype=head.dtype, device=head.device)
    return (w @ head)[None]


def read_reward_info(model_dir: str) -> dict:
    path = Path(model_dir, REWARD_INFO_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_reward_info(model_dir: str, info: dict) -> None:
    path = Path(model_dir, REWARD_INFO_FILE)
    merged = {**read_reward_info(model_dir), **info}
    path.write_text(json.dumps(merged, indent=2) + "\n")


def stored_normalization(model_dir: str, weights_name: str) -> tuple[float, float] | None:
    """(mean, std) of the scalar reward `weights_name` measured over a dataset and stored with the model, if any."""
    entry = read_reward_info(model_dir).get("normalization", {}).get(weights_name)
    return (float(entry["mean"]), float(entry["std"])) if entry else None


class ScalarRewardModel(nn.Module):
    """A k-head RM seen as one scalar reward `(wᵀ(W h) - mean) / std`, in the shape TRL's PPO expects:
    `getattr(model, model.base_model_prefix)` is the backbone and `model.score(hidden)` gives `[..., 1]`."""

    def __init__(self, reward_model, weights: Sequence[float] | str, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        weights = resolve_weights(weights, list(reward_model.config.id2label.values())) if isinstance(weights, str) else weights
        self.base_model_prefix = reward_model.base_model_prefix
        setattr(self, self.base_model_prefix, getattr(reward_model, reward_model.base_model_prefix))
        self.config = reward_model.config
        hidden = reward_model.score.weight.shape[1]
        self.score = nn.Linear(hidden, 1, bias=True, dtype=reward_model.score.weight.dtype)
        with torch.no_grad():
            self.score.weight.copy_(folded_head_weight(reward_model, weights) / std)
            self.score.bias.fill_(-mean / std)
        self.weights, self.mean, self.std = tuple(float(w) for w in weights), mean, std

    def forward(self, input_ids, attention_mask=None, **kwargs):
        """`[B]` rewards at the rightmost non-pad token (the end-of-turn token)."""
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        non_pad = (input_ids != self.config.pad_token_id).int()
        last = (torch.arange(input_ids.shape[1], device=input_ids.device) * non_pad).argmax(-1)
        return self.score(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]).squeeze(-1)
