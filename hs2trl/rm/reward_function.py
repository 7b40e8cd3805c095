"""A SteerLM reward model as TRL reward functions, for `RLOOTrainer` and `GRPOTrainer` (`reward_funcs=`).

Why a callable and not the model itself: given a `*ForSequenceClassification` model as a reward function, TRL's online
trainers read `logits[:, 0]` only (`RLOOTrainer._calculate_rewards`, TRL 1.12-1.16). For a 5-head SteerLM RM that is
helpfulness alone, silently. TRL also renders the conversation with the chat template's trailing newline, so its model
reads the token after the end-of-turn token, not the one the RM was trained on (`make bench`: rewards off by up to
1.4). Here the heads are folded with the chosen weights, at the end-of-turn token.

Each (prompt, completion) is rendered with the RM's own chat template and read at the end-of-turn token, exactly as
`hs2 annotate` reads it (`rm.scorer`: length-sorted, packed batches, here or on an `hs2 serve-rm` server). The reward
is `w·a` for the 5 predictions `a` (goodness by default), normalised to `(w·a - mean) / std` with the statistics `hs2
rm-normalize` stored beside the RM when asked; a 1-output RM (`hs2 export-rm`) is its own reward. Every call logs each
attribute's batch mean through TRL's `log_metric` (`attributes/<name>` in the trainer's log), and appends what it
scored to a JSON-lines reward log when given one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

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

    The RM is a `rm.scorer` scorer: loaded in this process, or served by `hs2 serve-rm` (`--reward-url`).
    `attribute_functions()` gives one reward function per attribute instead (GRPO's multi-objective mode); they share
    one scoring pass per batch."""

    def __init__(self, scorer, weights: Sequence[float] | None, mean: float = 0.0, std: float = 1.0,
                 log_path: str | None = None, name: str = "steerlm_rm"):
        self.scorer, self.attributes = scorer, list(scorer.attributes)
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.mean, self.std = float(mean), float(std)
        self.log_path = log_path
        self.__name__ = name  # TRL names the reward's metrics after it (`rewards/<name>/mean`)
        self._last: tuple[tuple, torch.Tensor] | None = None

    # -- loading

    @classmethod
    def load(cls, name_or_path: str | None = None, weights: str | None = None, normalize: bool = False,
             dtype: str = "float32", device: str | None = None, url: str | None = None,
             api_key_env: str | None = None, batch_size: int = 16, max_length: int | None = None,
             **kwargs) -> SteerLMReward:
        """From a reward model (`rm.loading`: folder, Hub id, `pkg:` name, adapter) or the `hs2 serve-rm` servers at
        `url`; `weights` None = goodness."""
        from hs2trl.rm.scorer import open_scorer

        scorer = open_scorer(name_or_path, url, api_key_env, dtype=dtype, device=device, batch_size=batch_size,
                             max_length=max_length)
        folded, key = scorer.weights(weights, "goodness")
        mean, std = 0.0, 1.0
        if normalize:
            stats = scorer.normalization(key)
            if stats is None:
                raise Hs2Error(missing_normalization(name_or_path or url, key))
            mean, std = stats
        return cls(scorer, folded, mean, std, **kwargs)

    def prepare(self, accelerator) -> None:
        """Put a local RM where the trainer's model is (`rm.scorer.LocalScorer.prepare`: ZeRO-3 or this device)."""
        self.scorer.prepare(accelerator)

    @property
    def truncated(self) -> int:
        return self.scorer.truncated

    # -- scoring

    def attribute_scores(self, prompts: Sequence, completions: Sequence) -> torch.Tensor:
        """`[N, k]` head outputs, one row per (prompt, completion); the last batch is remembered, so that the
        per-attribute functions TRL calls one after another score it once."""
        key = (len(prompts), tuple(map(completion_text, completions)), tuple(map(repr, prompts)))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        scores = self.scorer.scores([as_conversation(p, c) for p, c in zip(prompts, completions)])
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
