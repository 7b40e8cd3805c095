"""Online RL with the SteerLM RM (`hs2 rloo`, `hs2 grpo`) on tiny models (CPU), and the reward function itself: the
reward hs2 gave a step's completions is the RM's weighted fold, recomputed here, and not helpfulness alone (what TRL
would read from the model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.fixtures import ATTRS, REPO, run_hs2

pytestmark = pytest.mark.trl_internals  # also run on TRL 1.12 by make test-trl112

GOODNESS = (0.65, 0.8, 0.45, 0.0, 0.0)
CONVERSATIONS = [
    ([{"role": "user", "content": "What is 2 + 2?"}], [{"role": "assistant", "content": "2 + 2 = 4."}]),
    ([{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
      {"role": "user", "content": "Name three colours."}], [{"role": "assistant", "content": "Red, green and blue."}]),
    ("Capital of France?", "Paris, the largest city of France."),  # TRL's standard (string) format
]


def rescore(rm_dir: str, conversations: list[list[dict]]) -> torch.Tensor:
    """`[N, 5]` predictions of the RM, read as `hs2 annotate` reads them (independently of the reward function)."""
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    model, tokenizer, _ = load_reward_model(rm_dir)
    return score_conversations(model, tokenizer, conversations)


def as_messages(prompt, completion) -> list[dict]:
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    return [*prompt, *completion]


# ------------------------------------------------------------------ the reward function, in process


def test_reward_is_the_weighted_fold_not_helpfulness(tiny_rm_dir):
    from hs2trl.rm.reward_function import SteerLMReward

    reward = SteerLMReward.load(tiny_rm_dir)  # goodness by default
    prompts, completions = zip(*CONVERSATIONS)
    logged = {}
    got = torch.tensor(reward(list(prompts), list(completions), log_metric=logged.__setitem__))
    scores = rescore(tiny_rm_dir, [as_messages(p, c) for p, c in CONVERSATIONS])
    assert torch.allclose(got, scores @ torch.tensor(GOODNESS), atol=1e-5)
    assert not torch.allclose(got, scores[:, 0], atol=1e-3)  # TRL's logits[:, 0]
    assert sorted(logged) == sorted(f"attributes/{a}" for a in ATTRS)
    assert logged["attributes/verbosity"] == pytest.approx(float(scores[:, 4].mean()), abs=1e-5)


def test_normalised_and_per_attribute_rewards(tiny_rm_dir, tmp_path):
    import shutil

    from hs2trl.rm.reward_function import SteerLMReward
    from hs2trl.rm.rewards import write_reward_info

    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)
    write_reward_info(str(rm), {"normalization": {"1,0,0,0,1": {"mean": 0.5, "std": 0.25}}})
    reward = SteerLMReward.load(str(rm), "1,0,0,0,1", normalize=True)
    prompts, completions = zip(*CONVERSATIONS)
    scores = rescore(tiny_rm_dir, [as_messages(p, c) for p, c in CONVERSATIONS])
    expected = (scores[:, 0] + scores[:, 4] - 0.5) / 0.25
    assert torch.allclose(torch.tensor(reward(list(prompts), list(completions))), expected, atol=1e-4)

    functions, weights = reward.attribute_functions()
    assert [f.__name__ for f in functions] == ATTRS and weights == [4.0, 0.0, 0.0, 0.0, 4.0]
    per = torch.tensor([f(list(prompts), list(completions)) for f in functions]).T
    assert torch.allclose(per, scores, atol=1e-5)
    assert torch.allclose(per @ torch.tensor(weights) - 0.5 / 0.25, expected, atol=1e-4)  # GRPO's weighted sum


def test_a_one_output_rm_is_its_own_reward(tiny_rm_dir, tmp_path):
    from hs2trl.rm.reward_function import SteerLMReward
    from hs2trl.rm.rewards import export_scalar_model
    from hs2trl.runtime.errors import Hs2Error

    exported = tmp_path / "goodness"
    export_scalar_model(tiny_rm_dir, "goodness", str(exported))
    reward = SteerLMReward.load(str(exported))
    prompts, completions = zip(*CONVERSATIONS)
    scores = rescore(tiny_rm_dir, [as_messages(p, c) for p, c in CONVERSATIONS])
    assert reward.weights is None
    assert torch.allclose(torch.tensor(reward(list(prompts), list(completions))), scores @ torch.tensor(GOODNESS),
                          atol=1e-4)
    with pytest.raises(Hs2Error, match="multi-attribute"):
        reward.attribute_functions()


# ------------------------------------------------------------------ end to end, through the CLI

RL_OPTIONS = ["--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2",
              "--max_completion_length", "16"]


def run_online_rl(command: str, tmp_path: Path, lm: str, rm: str, data: str, *extra: str):
    out = tmp_path / command
    result = run_hs2(command, "--model", lm, "--reward-model", rm, "--dataset", data, "--output-dir", str(out),
                     *RL_OPTIONS, *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def check_run(out: Path, rm_dir: str, tokenizer) -> list[dict]:
    """The saved policy reloads; the log has the reward and each attribute; the logged completions' rewards are the
    RM's goodness of them, recomputed; returns the reward log."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert len(steps) == 2
    for entry in steps:
        assert all(f"attributes/{a}" in entry for a in ATTRS), entry
    rows = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["step"] == 0]
    assert len(first) == 2  # the first step's completions (1 prompt x 2 generations)
    scores = rescore(rm_dir, [as_messages(r["prompt"], r["completion"]) for r in first])
    recomputed = scores @ torch.tensor(GOODNESS)
    assert torch.allclose(torch.tensor([r["reward"] for r in first]), recomputed, atol=1e-4)
    assert not torch.allclose(recomputed, scores[:, 0], atol=1e-3)  # not TRL's helpfulness-only reading
    assert steps[0]["reward"] == pytest.approx(float(recomputed.mean()), abs=1e-4)  # what TRL trained on
    for a, attribute in enumerate(ATTRS):
        assert steps[0][f"attributes/{attribute}"] == pytest.approx(float(scores[:, a].mean()), abs=1e-4)
    return rows


@pytest.mark.slow
def test_rloo(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file, tokenizer):
    out, result = run_online_rl("rloo", tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file)
    assert "8 distinct prompts from 16 rows" in result.stdout
    assert "reward = 0.65*helpfulness + 0.8*correctness + 0.45*coherence" in result.stdout
    assert "training RLOOTrainer on 1 process(es)" in result.stdout
    check_run(out, tiny_rm_dir, tokenizer)
    assert "# hs2trl stage: rloo" in (out / "hs2trl_recipe.yaml").read_text()


@pytest.mark.slow
def test_grpo_per_attribute_rewards(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file, tokenizer):
    out, result = run_online_rl("grpo", tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file, "--per-attribute-rewards")
    assert "training GRPOTrainer on 1 process(es)" in result.stdout
    check_run(out, tiny_rm_dir, tokenizer)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(f"rewards/{a}/mean" in history[0] for a in ATTRS)  # five reward functions, one per attribute


@pytest.mark.slow
def test_rloo_two_ranks(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file):
    out, result = run_online_rl("rloo", tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file, "--num-processes", "2")
    assert "training RLOOTrainer on 2 process(es) (world size 2)" in result.stdout
    for rank in (0, 1):  # each rank scores its own completions
        assert (out / f"rewards.rank-{rank}.jsonl").read_text().strip()


def test_ppo_without_ppo_trainer_is_one_line():
    """On TRL >= 1.13 `hs2 ppo` stops before it loads or reads anything, naming the version and the way out."""
    from hs2trl.trl_internals import has_ppo_trainer, trl_version

    if has_ppo_trainer():
        pytest.skip(f"TRL {trl_version()} ships PPOTrainer")
    result = run_hs2("ppo", "--model", "M", "--reward-model", "RM", "--dataset", "D", "--output-dir", "O")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "hs2trl[ppo]" in lines[0] and f"TRL {trl_version()}" in lines[0] and "hs2 rloo" in lines[0]


def test_reinforce_recipe_values():
    """HelpSteer2-Preference's REINFORCE run with NeMo-Aligner's defaults; the global batch from the recipe alone."""
    from hs2trl.stages import rloo

    data, args, model = rloo.parse(["--config", str(REPO / "recipes/llama3.1-70b/reinforce.yaml"), "--bf16", "false"])
    assert model.model_name_or_path == "meta-llama/Llama-3.1-70B-Instruct"
    assert (args.beta, args.num_generations, args.learning_rate) == (0.01, 4, 9e-7)
    completions = args.per_device_train_batch_size * args.gradient_accumulation_steps * 64  # 8 nodes x 8 GPUs
    assert completions == 512 and completions // args.num_generations == 128
    assert data.attribute_weights == "goodness" and args.use_vllm
