"""From attribute predictions to one reward: weights, folded linear heads, normalisation, export, a scalar model
for PPO.

A weighted sum of linear heads is itself one linear head: `w·(W h + b) = (wᵀW) h + wᵀb`. So a k-head SteerLM RM becomes
a 1-output model with the same backbone and a folded head (`export_scalar_model`), usable by stock TRL trainers,
RewardBench's own tool and pipelines. Normalisation `(r - mean) / std` needs a bias, which Llama-family heads lack,
so it lives in `ScalarRewardModel` (used for PPO) and in the `hs2trl_reward.json` file stored next to the model:

    {"normalization": {"goodness": {"mean": .., "std": .., "dataset": .., "n": ..}},
     "export": {"source": .., "weights_name": "goodness", "weights": {"helpfulness": 0.65, ..}}}   (exported models)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from hs2trl.rm.attributes import ATTRIBUTES, WEIGHT_PRESETS, resolve_weights
from hs2trl.rm.head import HEAD_NAMES, reward_head
from hs2trl.runtime.errors import Hs2Error

REWARD_INFO_FILE = "hs2trl_reward.json"


# ---------------------------------------------------------------------------------------------------------------
# Weights


def weights_for(attributes: Sequence[str], spec: str | Sequence[float]) -> tuple[float, ...]:
    """One weight per model output (`attributes` = the model's id2label, in head order).

    A preset is matched by attribute name, so a model whose heads are ordered differently still gets the right weights;
    a list of numbers is taken in head order."""
    attributes = list(attributes)
    if isinstance(spec, str) and spec in WEIGHT_PRESETS:
        preset = dict(zip(ATTRIBUTES, WEIGHT_PRESETS[spec]))
        unknown = [a for a in attributes if a not in preset]
        if unknown:
            raise Hs2Error(
                f"weights: preset '{spec}' is defined for {', '.join(ATTRIBUTES)}; this model's outputs include "
                f"{', '.join(unknown)}: give one number per output instead (--weights a,b,...)"
            )
        lacking = [a for a, w in preset.items() if w and a not in attributes]
        if lacking:
            raise Hs2Error(f"weights: preset '{spec}' weights {', '.join(lacking)}, which this model does not predict")
        return tuple(preset[a] for a in attributes)
    return resolve_weights(spec, attributes)


def weights_key(spec: str | Sequence[float]) -> str:
    """The key a weighting is stored under: the preset name, or the numbers as given ('0.5,1,0,0,0')."""
    if isinstance(spec, str):
        if spec in WEIGHT_PRESETS:
            return spec
        spec = resolve_weights(spec, [""] * len(spec.split(",")))
    return ",".join(f"{float(w):g}" for w in spec)


def model_attributes(model) -> list[str]:
    from hs2trl.rm.modeling import reward_attributes

    return reward_attributes(model.config)


def scalar_rewards(scores: torch.Tensor, weights: Sequence[float] | None) -> torch.Tensor:
    """`[N, k]` model outputs -> `[N]` rewards: the weighted sum, or the one output of a 1-output RM (weights None)."""
    if weights is None:
        if scores.shape[-1] != 1:
            raise Hs2Error(f"a {scores.shape[-1]}-output reward model needs weights to give one reward (--weights)")
        return scores[..., 0]
    w = torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
    return scores @ w


def resolve_scoring_weights(model_dir: str, attributes: Sequence[str], spec: str | None,
                            default: str | None, info: dict | None = None) -> tuple[tuple[float, ...] | None, str]:
    """(weights or None for a 1-output RM, their name) for scoring a model with `--weights spec`.

    A 1-output RM is scored directly; `spec` is then allowed only when it names the weights it was exported with.
    `info`: the model's hs2trl_reward.json when it is not read from `model_dir` (a served model's, `hs2 serve-rm`)."""
    if len(attributes) == 1:
        info = read_reward_info(model_dir) if info is None else info
        exported = info.get("export", {}).get("weights_name")
        if spec is not None and spec != exported:
            raise Hs2Error(
                f"{model_dir}: a 1-output reward model is scored directly; --weights applies to multi-attribute RMs"
                + (f" (this one was exported with '{exported}')" if exported else "")
            )
        return None, exported or attributes[0]
    spec = spec if spec is not None else default
    if spec is None:
        raise Hs2Error(f"{model_dir}: a {len(attributes)}-output reward model needs --weights (a preset or numbers)")
    return weights_for(attributes, spec), weights_key(spec)


def check_weights(spec: str | None, model: str | None = None) -> None:
    """What a dry run can check of `--weights` without loading a model: a preset or numbers, and, when the model is a
    local folder, one weight per output of its config (a 1-output RM takes none: it is scored directly)."""
    import os

    if spec is None:
        return
    if spec not in WEIGHT_PRESETS:
        resolve_weights(spec, [""] * len(spec.split(",")))  # numbers, or one line naming the presets
    config = os.path.join(model, "config.json") if model else ""
    if config and os.path.isfile(config):
        from hs2trl.rm.loading import reward_model_attributes

        attributes = reward_model_attributes(model)
        if len(attributes) > 1:
            weights_for(attributes, spec)


# ---------------------------------------------------------------------------------------------------------------
# The folded head and the info file


def folded_head_weight(model, weights: Sequence[float]) -> torch.Tensor:
    """`[1, hidden]` = wᵀW for the model's `[k, hidden]` score head (computed in float32, returned in the
    head's dtype)."""
    head = reward_head(model).weight
    w = torch.as_tensor(weights, dtype=torch.float32, device=head.device)
    return (w @ head.float())[None].to(head.dtype)


def folded_head_bias(model, weights: Sequence[float]) -> torch.Tensor | None:
    """`[1]` = wᵀb, or None for a head without bias (Llama family)."""
    bias = reward_head(model).bias
    if bias is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32, device=bias.device)
    return (w @ bias.float())[None].to(bias.dtype)


def head_weights(attributes: Sequence[str], spec: str) -> tuple[float, ...]:
    """The weights that make one output of a k-output RM: an output's name takes its row (one-hot), a preset or
    numbers fold the rows (`weights_for`)."""
    if spec in attributes:
        return tuple(float(a == spec) for a in attributes)
    if spec in WEIGHT_PRESETS or "," in spec:
        return weights_for(attributes, spec)
    raise Hs2Error(f"'{spec}' is neither an output of this reward model ({', '.join(attributes)}) nor a weight preset "
                   f"({', '.join(WEIGHT_PRESETS)}) nor a list of numbers")


def fold_to_one_output(model, weights: Sequence[float], label: str):
    """Replace the model's k-output head, in place, by its fold wᵀW (and wᵀb): a 1-output RM named `label` whose logit
    is the weighted sum of the k outputs. Returns the model."""
    head = reward_head(model)
    folded = nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=head.weight.dtype,
                       device=head.weight.device)
    with torch.no_grad():
        folded.weight.copy_(folded_head_weight(model, weights))
        if head.bias is not None:
            folded.bias.copy_(folded_head_bias(model, weights))
    for attr in HEAD_NAMES:
        if getattr(model, attr, None) is head:
            setattr(model, attr, folded)
    model.config.id2label = {0: label}
    model.config.label2id = {label: 0}
    model.config.problem_type = "regression"
    if hasattr(model, "num_labels"):
        model.num_labels = 1
    return model


def read_reward_info(model_dir: str) -> dict:
    path = Path(model_dir, REWARD_INFO_FILE)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise Hs2Error(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None


def write_reward_info(model_dir: str, info: dict) -> None:
    """Merge `info` into the model's hs2trl_reward.json (the `normalization` entries merge per weights name)."""
    path = Path(model_dir, REWARD_INFO_FILE)
    current = read_reward_info(model_dir)
    merged = {**current, **info}
    if "normalization" in info:
        merged["normalization"] = {**current.get("normalization", {}), **info["normalization"]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(path)


def stored_normalization(model_dir: str, weights_name: str, info: dict | None = None) -> tuple[float, float] | None:
    """(mean, std) of the scalar reward `weights_name` measured over a dataset and stored with the model, if any
    (`info`: the model's hs2trl_reward.json when it is not read from `model_dir`)."""
    info = read_reward_info(model_dir) if info is None else info
    entry = info.get("normalization", {}).get(weights_name)
    return (float(entry["mean"]), float(entry["std"])) if entry else None


# ---------------------------------------------------------------------------------------------------------------
# Normalisation


def normalization_stats(rewards: torch.Tensor) -> dict:
    """Mean and (sample, ddof=1) standard deviation of a reward vector."""
    rewards = rewards.double()
    if rewards.numel() < 2:
        raise Hs2Error(f"normalisation needs at least 2 responses, got {rewards.numel()}")
    std = float(rewards.std())
    if not math.isfinite(std) or std == 0.0:
        raise Hs2Error("normalisation: the rewards are all equal (std 0); measure them on a more varied dataset")
    return {"mean": float(rewards.mean()), "std": std, "n": int(rewards.numel())}


def measure_normalization(model_dir: str, conversations: Sequence[Sequence[dict]],
                          weights: str | Sequence[float] = "goodness",
                          weights_name: str | None = None, dataset: str | None = None, batch_size: int = 16,
                          progress: bool = True, store: bool = True, model=None, tokenizer=None) -> dict:
    """Mean and std of the weighted reward of the model at `model_dir` over `conversations` (chat messages ending on
    the assistant turn); stored in `model_dir/hs2trl_reward.json` under `normalization[name]` when `store` (PPO reads
    it back with `stored_normalization(model_dir, name)`). Returns the entry, with `name` added.

    For a 1-output RM (e.g. exported) `weights` is ignored and the entry is named after its export weights."""
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    if model is None or tokenizer is None:
        model, tokenizer, _ = load_reward_model(model_dir)
    attributes = model_attributes(model)
    if len(attributes) == 1:
        w, name = None, weights_name or resolve_scoring_weights(model_dir, attributes, None, None)[1]
    else:
        w, name = weights_for(attributes, weights), weights_name or weights_key(weights)
    scores = score_conversations(model, tokenizer, conversations, batch_size=batch_size, progress=progress)
    entry = {**normalization_stats(scalar_rewards(scores, w)), "dataset": dataset,
             "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if w is not None:
        entry["weights"] = dict(zip(attributes, w))
    if store:
        write_reward_info(model_dir, {"normalization": {name: entry}})
    return {**entry, "name": name}


# ---------------------------------------------------------------------------------------------------------------
# Export: one folded head


def export_scalar_model(model_dir: str, weights: str | Sequence[float], output_dir: str, label: str | None = None,
                        dtype: str = "auto") -> dict:
    """Save a 1-output `AutoModelForSequenceClassification` whose logit is the weighted sum of `model_dir`'s outputs.

    The backbone is copied unchanged; the head becomes wᵀW (and wᵀb where the head has a bias). The config says
    `problem_type = "regression"` so that HF pipelines return the raw logit (no sigmoid). The weights used and any
    normalisation stored for them go to `output_dir/hs2trl_reward.json`. Returns that export entry."""
    from hs2trl.rm.loading import check_reward_model, load_reward_model

    config = check_reward_model(model_dir)  # {} for a Hub id or an adapter: checked once loaded
    if len(config.get("id2label") or {}) == 1 or config.get("num_labels") == 1:
        raise Hs2Error(f"{model_dir}: already a 1-output reward model; nothing to fold")
    model, tokenizer, attributes = load_reward_model(model_dir, dtype=dtype)
    if len(attributes) == 1:
        raise Hs2Error(f"{model_dir}: already a 1-output reward model; nothing to fold")
    w = weights_for(attributes, weights)
    name = weights_key(weights)
    label = label or (name if isinstance(weights, str) and weights in WEIGHT_PRESETS else "reward")
    fold_to_one_output(model, w, label)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    export = {"source": str(model_dir), "weights_name": name, "weights": dict(zip(attributes, w)), "label": label}
    info: dict = {"export": export}
    stored = read_reward_info(model_dir).get("normalization", {}).get(name)
    if stored:  # the exported logit is exactly this weighted reward, so its normalisation carries over
        info["normalization"] = {name: stored}
    write_reward_info(output_dir, info)
    return export


# ---------------------------------------------------------------------------------------------------------------
# PPO adapter


class ScalarRewardModel(nn.Module):
    """A k-head RM seen as one scalar reward `(wᵀ(W h) - mean) / std`, in the shape TRL's PPO expects:
    `getattr(model, model.base_model_prefix)` is the backbone and `model.score(hidden)` gives `[..., 1]`."""

    def __init__(self, reward_model, weights: Sequence[float] | str, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if isinstance(weights, str):
            weights = weights_for(model_attributes(reward_model), weights)
        self.base_model_prefix = reward_model.base_model_prefix
        setattr(self, self.base_model_prefix, getattr(reward_model, reward_model.base_model_prefix))
        self.config = reward_model.config
        head = reward_head(reward_model)
        self.score = nn.Linear(head.in_features, 1, bias=True, dtype=head.weight.dtype, device=head.weight.device)
        with torch.no_grad():
            self.score.weight.copy_(folded_head_weight(reward_model, weights) / std)
            bias = folded_head_bias(reward_model, weights)
            self.score.bias.fill_(((float(bias) if bias is not None else 0.0) - mean) / std)
        self.weights, self.mean, self.std = tuple(float(w) for w in weights), mean, std

    def forward(self, input_ids, attention_mask=None, **kwargs):
        """`[B]` rewards at the rightmost non-pad token (the end-of-turn token)."""
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        non_pad = (input_ids != self.config.pad_token_id).int()
        last = (torch.arange(input_ids.shape[1], device=input_ids.device) * non_pad).argmax(-1)
        return self.score(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]).squeeze(-1)


def check_export(model_dir: str, output_dir: str, weights: Sequence[float], conversations: Sequence[Sequence[dict]],
                 dtype: str = "auto") -> float:
    """Largest |exported logit - weighted sum of the source's outputs| over `conversations`, the exported model loaded
    with plain `AutoModelForSequenceClassification.from_pretrained` (as any user of it would)."""
    from transformers import AutoModelForSequenceClassification

    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    source, tokenizer, _ = load_reward_model(model_dir, dtype=dtype)
    expected = scalar_rewards(score_conversations(source, tokenizer, conversations), weights)
    del source
    exported = AutoModelForSequenceClassification.from_pretrained(output_dir, dtype=dtype).eval()
    got = score_conversations(exported, tokenizer, conversations)[:, 0]
    return float((got - expected).abs().max())
