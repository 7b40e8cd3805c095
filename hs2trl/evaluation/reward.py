"""`reward`: how a SteerLM reward model rates a policy's answers, offline and without a judge.

The policy answers the distinct prompts of a HelpSteer2-format split (by default nvidia/HelpSteer2 validation)
greedily; the RM scores each (prompt, answer) and a weighting turns the five attributes into one reward (goodness by
default: 0.65 helpfulness + 0.8 correctness + 0.45 coherence, §4.3). Reported: the mean reward with its SE and the
mean of each attribute; with a reference model, the win rate of the policy's answer over the reference's on the same
prompt (a tie counts a half) with a 95% percentile-bootstrap interval over prompts (1,000 resamples, seed 0).

This is what a CPU user can measure: whether iterative DPO, PPO or SteerLM moved a policy in the direction the RM
rewards. It is not a paper figure (the RM is also the training signal: it says nothing of over-optimisation).
"""

from __future__ import annotations

import math
from pathlib import Path

from hs2trl.evaluation.answers import AnswerFile, Policy
from hs2trl.runtime.resumable import KeyedLog

NAME = "reward"
MAX_NEW_TOKENS = 1024
DEFAULT_DATASET, DEFAULT_SPLIT = "nvidia/HelpSteer2", "validation"
BOOTSTRAP_ROUNDS, BOOTSTRAP_SEED = 1000, 0


def load_prompts(dataset: str, split: str, limit: int | None) -> list[dict]:
    """Each distinct prompt of the split once (HelpSteer2 rows come in pairs that share one), in order."""
    from hs2trl.data.conversations import distinct_prompts
    from hs2trl.data.sources import read_records

    prompts, _ = distinct_prompts(read_records(dataset, split))
    return [{"question_id": i, "messages": m} for i, m in enumerate(prompts[:limit])]


def generate(policy: Policy, folder: Path, dataset: str, split: str, limit: int | None, max_new_tokens: int) -> dict:
    """Answer each prompt's last user turn after its earlier turns (as in the data)."""
    prompts = load_prompts(dataset, split, limit)
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "attributes": policy.attributes,
                "dataset": f"{dataset}[{split}]"}
    answers = AnswerFile(folder, settings)
    done = answers.load()
    todo = [p for p in prompts if p["question_id"] not in done]
    for batch in policy.answer([p["messages"] for p in todo], max_new_tokens, desc="Reward prompts: answers"):
        answers.save([{"question_id": todo[i]["question_id"], "turns": [text]} for i, text in batch])
    answers.compact([p["question_id"] for p in prompts])
    return {"questions": len(prompts), "answers": len(prompts), "data_source": f"{dataset}[{split}]"}


def score(scorer, folder: Path, dataset: str, split: str,
          limit: int | None) -> tuple[list[float], list[dict], list[int]]:
    """Score the answers in `folder` with the RM (cached in judgments.jsonl): rewards, attributes and the answers'
    lengths in characters, in prompt order."""
    prompts = load_prompts(dataset, split, limit)
    answers = KeyedLog(folder / "answers.jsonl", key="question_id").load()
    log = KeyedLog(folder / "judgments.jsonl", key="question_id")
    cached = {k: r for k, r in log.load().items() if r.get("reward_model") == scorer.name}
    todo = [p for p in prompts if p["question_id"] not in cached]
    if todo:
        conversations = [p["messages"] + [{"role": "assistant", "content": answers[p["question_id"]]["turns"][0]}]
                         for p in todo]
        attributes, rewards = scorer(conversations)
        log.append([{"question_id": p["question_id"], "reward_model": scorer.name, "weights": scorer.weights_name,
                     "reward": r, "attributes": a} for p, r, a in zip(todo, rewards, attributes)])
        cached = {k: r for k, r in log.load().items() if r.get("reward_model") == scorer.name}
        log.compact([p["question_id"] for p in prompts])
    return ([cached[p["question_id"]]["reward"] for p in prompts],
            [cached[p["question_id"]]["attributes"] for p in prompts],
            [len(answers[p["question_id"]]["turns"][0]) for p in prompts])


class RewardScorer:
    """A SteerLM RM (loaded here, or served: `url`) and a weighting: conversations -> (attribute predictions,
    rewards). Its `name`, which keys the cached scores, is the model's (a server reports its model's), so that local
    and served scoring of one model share the cache: they give the same numbers."""

    def __init__(self, model: str | None, weights: str | None, dtype: str = "float32", batch_size: int = 8,
                 url: str | None = None, api_key_env: str | None = None):
        import torch

        from hs2trl.rm.scorer import open_scorer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = open_scorer(model, url, api_key_env, dtype=dtype, device=device, batch_size=batch_size)
        self.outputs = self.scorer.attributes
        self.weights, self.weights_name = self.scorer.weights(weights, "goodness")
        self.name = model or getattr(self.scorer, "model_name", "") or self.scorer.name

    def __call__(self, conversations):
        from hs2trl.rm.rewards import scalar_rewards

        raw = self.scorer.scores(conversations, progress=True)
        rewards = scalar_rewards(raw, self.weights)
        named = [dict(zip(self.outputs, (round(float(x), 6) for x in row))) for row in raw]
        return named, [float(r) for r in rewards]


def summarise(rewards: list[float], attributes: list[dict], weights_name: str, reward_model: str, source: str,
              lengths: list[int] | None = None) -> dict:
    n = len(rewards)
    mean = sum(rewards) / n
    se = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1) / n) if n > 1 else None
    names = list(attributes[0]) if attributes else []
    return {"score": mean, "n": n, "interval": {"kind": "se", "value": se} if se is not None else None,
            "attributes": {a: sum(row[a] for row in attributes) / n for a in names},
            "weights": weights_name, "judge": f"reward model {reward_model}", "data_source": source,
            "mean_response_chars": sum(lengths) / len(lengths) if lengths else None}


def win_rate(ours: list[float], theirs: list[float]) -> dict:
    """Share of prompts where our reward is higher (ties a half), with a 95% percentile-bootstrap interval."""
    import numpy as np

    outcome = np.where(np.array(ours) > np.array(theirs), 1.0, np.where(np.array(ours) == np.array(theirs), 0.5, 0.0))
    rng = np.random.RandomState(BOOTSTRAP_SEED)
    boot = [outcome[rng.randint(0, len(outcome), len(outcome))].mean() for _ in range(BOOTSTRAP_ROUNDS)]
    return {"win_rate": float(outcome.mean()), "n": int(len(outcome)),
            "interval": {"kind": "ci95", "low": float(np.percentile(boot, 2.5)),
                         "high": float(np.percentile(boot, 97.5))}}
