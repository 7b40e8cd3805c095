"""A SteerLM reward model as TRL reward functions, for `RLOOTrainer` and `GRPOTrainer` (`reward_funcs=`).

Why a callable and not the model itself: given a `*ForSequenceClassification` model as a reward function, TRL's online
trainers read `logits[:, 0]` only (`RLOOTrainer._calculate_rewards`, TRL 1.12-1.16). For a 5-head SteerLM RM that is
helpfulness alone, silently. TRL also renders the conversation with the chat template's trailing newline, so its model
reads the token after the end-of-turn token, not the one the RM was trained on (`make bench`: rewards off by up to
1.4). Here the heads are folded with the chosen weights, at the end-of-turn token.

Each (prompt, completion) is rendered with the RM's own chat template and read at the end-of-turn token, exactly as
`hs2 annotate` reads it (`scoring.score_token_ids`: length-sorted, packed batches). The reward is `w·a` for the 5
predictions `a` (goodness by default), normalised to `(w·a - mean) / std` with the statistics `hs2 rm-normalize` stored
beside the RM when asked; a 1-output RM (`hs2 export-rm`) is its own reward. Every call logs each attribute's batch
mean through TRL's `log_metric` (`attributes/<name>` in the trainer's log), and appends what it scored to a JSON-lines
reward log when given one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from hs2trl.data.chat import encode_conversation
from hs2trl.runtime.errors import Hs2Error

METRIC_PREFIX = "attributes/"


def as_conversation(prompt, completion) -> list[dict]:
    """TRL's prompt (chat messages or a string) + completion (one assistant message in a list, or a string)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [
        {"role": m["role"], "content": m["content"]} for m in prompt]
    if isinstance(completion, str):
        return [*messages, {"role": "assistant", "content": completion}]
    return [*messages, *({"role": m["role"], "content": m["content"]} for m in completion)]


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


class SteerLMReward:
    """`reward(prompts=, completions=, **kwargs) -> list[float]`: the RM's weighted, optionally normalised reward.

    `attribute_functions()` gives one reward function per attribute instead (GRPO's multi-objective mode); they share
    one scoring pass per batch."""

    def __init__(self, model, tokenizer, attributes: Sequence[str], weights: Sequence[float] | None,
                 mean: float = 0.0, std: float = 1.0, batch_size: int = 16, max_length: int | None = None,
                 log_path: str | None = None, name: str = "steerlm_rm"):
        self.model, self.tokenizer, self.attributes = model, tokenizer, list(attributes)
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.mean, self.std = float(mean), float(std)
        self.batch_size, self.max_length, self.log_path = batch_size, max_length, log_path
        self.__name__ = name  # TRL names the reward's metrics after it (`rewards/<name>/mean`)
        self.truncated = 0
        self._last: tuple[tuple, torch.Tensor] | None = None

    # -- loading

    @classmethod
    def load(cls, name_or_path: str, weights: str | None = None, normalize: bool = False, dtype: str = "float32",
             device: str | None = None, **kwargs) -> SteerLMReward:
        """From a reward model (`rm.loading`: folder, Hub id, `pkg:` name, adapter); `weights` None = goodness."""
        from hs2trl.rm.loading import load_reward_model
        from hs2trl.rm.rewards import resolve_scoring_weights, stored_normalization
        from hs2trl.runtime.pretrained import resolve_model

        path = resolve_model(name_or_path)
        model, tokenizer, attributes = load_reward_model(path, dtype=dtype, device=device)
        folded, key = resolve_scoring_weights(path, attributes, weights, "goodness")
        mean, std = 0.0, 1.0
        if normalize:
            stats = stored_normalization(path, key)
            if stats is None:
                raise Hs2Error(missing_normalization(name_or_path, key))
            mean, std = stats
        return cls(model, tokenizer, attributes, folded, mean, std, **kwargs)

    def prepare(self, accelerator) -> None:
        """Put the RM where the trainer's model is: sharded by DeepSpeed ZeRO-3 as TRL shards its own reward models,
        else on this process's device."""
        from hs2trl.trl_internals import prepare_deepspeed

        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            self.model = prepare_deepspeed(self.model, accelerator).module  # ZeRO-3 hooks live on the module
        else:
            self.model.to(accelerator.device)

    # -- scoring

    def attribute_scores(self, prompts: Sequence, completions: Sequence) -> torch.Tensor:
        """`[N, k]` head outputs, one row per (prompt, completion); the last batch is remembered, so that the
        per-attribute functions TRL calls one after another score it once."""
        from hs2trl.rm.rewardbench import truncate_left
        from hs2trl.rm.scoring import score_token_ids

        key = (len(prompts), tuple(map(completion_text, completions)), tuple(map(repr, prompts)))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        sequences = [encode_conversation(self.tokenizer, as_conversation(p, c)) for p, c in zip(prompts, completions)]
        self.truncated += truncate_left(sequences, self.max_length)
        scores = score_token_ids(self.model, self.tokenizer.pad_token_id, sequences, self.batch_size)
        self._last = (key, scores)
        return scores

    def fold(self, scores: torch.Tensor) -> torch.Tensor:
        from hs2trl.rm.rewards import scalar_rewards

        return (scalar_rewards(scores, self.weights) - self.mean) / self.std

    def __call__(self, prompts, completions, log_metric=None, trainer_state=None, **_) -> list[float]:
        scores = self.attribute_scores(prompts, completions)
        rewards = self.fold(scores)
        self._report(prompts, completions, scores, rewards, log_metric, trainer_state)
        return rewards.tolist()

    def attribute_functions(self) -> tuple[list, list[float]]:
        """One reward function per attribute (the raw prediction) and the weights that fold them, normalisation
        included: `Σ (w_i / std) a_i`. The normalisation's `- mean / std` is one constant for every completion, which
        GRPO's per-prompt baseline removes."""
        if self.weights is None:
            raise Hs2Error("per-attribute rewards need a multi-attribute reward model (this one has one output)")
        functions = [_AttributeReward(self, i, name) for i, name in enumerate(self.attributes)]
        return functions, [w / self.std for w in self.weights]

    def _report(self, prompts, completions, scores, rewards, log_metric, trainer_state) -> None:
        if log_metric is not None:
            for name, value in zip(self.attributes, scores.mean(0).tolist()):
                log_metric(METRIC_PREFIX + name, value)
        if self.log_path:
            step = getattr(trainer_state, "global_step", None)
            with open(self.log_path, "a", encoding="utf-8") as f:
                for p, c, s, r in zip(prompts, completions, scores.tolist(), rewards.tolist()):
                    f.write(json.dumps({"step": step, "prompt": p, "completion": c,
                                        "attributes": dict(zip(self.attributes, s)), "reward": r},
                                       ensure_ascii=False) + "\n")


class _AttributeReward:
    """One attribute of a `SteerLMReward` as a TRL reward function (named after the attribute)."""

    def __init__(self, reward: SteerLMReward, index: int, name: str):
        self.reward, self.index, self.__name__ = reward, index, name

    def __call__(self, prompts, completions, log_metric=None, trainer_state=None, **_) -> list[float]:
        scores = self.reward.attribute_scores(prompts, completions)
        if self.index == 0:  # TRL calls the functions in order: the first reports the batch, once
            self.reward._report(prompts, completions, scores, self.reward.fold(scores), log_metric, trainer_state)
        return scores[:, self.index].tolist()


def missing_normalization(rm: str, key: str) -> str:
    return (f"{rm}: --normalize-reward: no stored '{key}' normalisation; measure it first with `hs2 rm-normalize "
            f"--model {rm} --dataset nvidia/HelpSteer2 --weights {key}`")


def reward_log_path(output_dir: str, process_index: int, num_processes: int) -> str:
    """`OUTPUT/rewards.jsonl`, or one file per process (`rewards.rank-R.jsonl`) when there are several."""
    name = "rewards.jsonl" if num_processes == 1 else f"rewards.rank-{process_index}.jsonl"
    return os.path.join(output_dir, name)
