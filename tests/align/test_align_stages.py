"""Alignment stages end to end on tiny models (CPU): SFT (2 ranks), DPO, iterative DPO (with resume), PPO; the PPO
reward equals the normalised goodness; every alignment recipe parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import REPO, helpsteer_rows, run_hs2, write_jsonl


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_saved_policy(folder: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert eot in (eos if isinstance(eos, list) else [eos])  # generation stops at the end of the turn
    assert model.config.pad_token_id == tokenizer.pad_token_id != eot


# ------------------------------------------------------------------ PPO's reward


@pytest.mark.ppo
def test_ppo_reward_equals_normalised_goodness(tiny_rm_dir, tokenizer):
    """What PPOTrainer computes (responses cut after <|im_end|>, TRL's get_reward on left-padded queries) equals the
    RM's goodness on the same conversation, scored by hs2trl.rm.scoring, normalised."""
    from hs2trl.data.chat import encode_conversation, encode_prompt, end_of_turn_id
    from hs2trl.rm.attributes import WEIGHT_PRESETS, scalarise
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations
    from hs2trl.stages.ppo import build_reward_model
    from hs2trl.trl_internals import ppo_reward_functions

    truncate_response, get_reward = ppo_reward_functions()

    mean, std = 0.25, 0.04
    reward_model = build_reward_model(tiny_rm_dir, "goodness", mean, std).eval()
    conversations = [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
        [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
         {"role": "user", "content": "Name three colours, please."},
         {"role": "assistant", "content": "Red, green and blue: the primary colours of light."}],
    ]
    eot, pad = end_of_turn_id(tokenizer), tokenizer.pad_token_id
    queries = [encode_prompt(tokenizer, c[:-1]) for c in conversations]
    fulls = [encode_conversation(tokenizer, c) for c in conversations]
    for q, f in zip(queries, fulls):
        assert f[: len(q)] == q and f[-1] == eot  # the generated part ends on the end-of-turn token
    responses = [f[len(q):] + [11, 12, 13] for q, f in zip(queries, fulls)]  # tokens generated past the stop
    q_width, r_width = max(map(len, queries)), max(map(len, responses)) + 2
    query_t = torch.full((2, q_width), pad)
    response_t = torch.full((2, r_width), pad)
    for i, (q, r) in enumerate(zip(queries, responses)):
        query_t[i, q_width - len(q):] = torch.tensor(q)  # PPOTrainer's queries are left-padded
        response_t[i, : len(r)] = torch.tensor(r)
    post = truncate_response(eot, pad, response_t)
    with torch.no_grad():
        _, score, _ = get_reward(reward_model, torch.cat((query_t, post), 1), pad, q_width)
    rm, rm_tokenizer, _ = load_reward_model(tiny_rm_dir)
    goodness = scalarise(score_conversations(rm, rm_tokenizer, conversations), WEIGHT_PRESETS["goodness"])
    expected = (goodness - mean) / std
    assert torch.allclose(score, expected, atol=1e-3), (score, expected)
    assert not torch.allclose(score[0], score[1])


@pytest.mark.ppo
def test_ppo_counts_and_value_model(tiny_lm_dir, tiny_rm_dir, tokenizer):
    from hs2trl.stages.ppo import build_value_model, parse, set_episode_counts

    _, training_args, model_args = parse(["--config", str(REPO / "recipes/demo/ppo.yaml"), "--max_steps", "3",
                                          "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                                          "--eval_steps", "1"])
    set_episode_counts(training_args, world_size=2, n_prompts=100)
    assert training_args.total_episodes == 3 * 2 * 2 * 2 and training_args.num_sample_generations == 3
    value = build_value_model("reward_model", tiny_rm_dir, tiny_lm_dir, tokenizer, "goodness", 0.0, 1.0, model_args)
    assert value.score.out_features == 1 and value.training and hasattr(value, value.base_model_prefix)
    value = build_value_model("policy", tiny_rm_dir, tiny_lm_dir, tokenizer, "goodness", 0.0, 1.0, model_args)
    assert value.score.out_features == 1 and float(value.score.weight.detach().abs().sum()) == 0.0


# ------------------------------------------------------------------ iterative DPO pieces, in process


def test_iterative_sampling_resumes_after_a_torn_write(tmp_path, tiny_lm_dir):
    from trl import ModelConfig

    from hs2trl.data.conversations import distinct_prompts
    from hs2trl.data.records import Record
    from hs2trl.stages.iterative_dpo import IterativeArguments, sample_round

    prompts, _ = distinct_prompts([Record("x", i, r) for i, r in enumerate(helpsteer_rows(3), 1)])
    it_args = IterativeArguments(num_samples=2, max_new_tokens=6, prompts_per_chunk=1)
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": prompts[1], "responses": ["kept", "as is"]}) + "\n"
                    + '{"id": 2, "prompt": [')  # a write cut off by a kill
    sample_round(tmp_path, tiny_lm_dir, prompts, it_args, ModelConfig(), seed=0, with_vllm=False)
    rows = {r["id"]: r for r in lines(path)}
    assert sorted(rows) == [0, 1, 2] and rows[1]["responses"] == ["kept", "as is"]
    assert all(len(r["responses"]) == 2 and r["prompt"] == prompts[r["id"]] for r in rows.values())


# ------------------------------------------------------------------ recipes


ALIGN_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml")
                       if p.stem.startswith("sft") or p.stem in ("dpo", "iterative-dpo", "ppo"))


@pytest.mark.parametrize("recipe", [pytest.param(p, marks=pytest.mark.ppo) if p.stem == "ppo" else p
                                    for p in ALIGN_RECIPES], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_alignment_recipes_parse(recipe):
    import importlib

    stage = "sft" if recipe.stem.startswith("sft") else recipe.stem.replace("-", "_")
    module = importlib.import_module(f"hs2trl.stages.{stage}")
    parsed = module.parse(["--config", str(recipe), "--bf16", "false"])  # bf16 is refused on this CPU
    training_args = parsed[-2]
    assert training_args.output_dir.startswith("outputs/")
    if recipe.parent.name == "llama3-70b":
        assert training_args.lr_scheduler_type == "constant"


def test_paper_values_in_recipes():
    from hs2trl.stages import dpo, iterative_dpo, sft

    _, args, _ = load(sft, "sft-open-assistant")
    assert (args.max_steps, args.learning_rate, args.save_steps) == (2400, 2e-6, 200)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 64 == 128
    _, args, _ = load(sft, "sft-daring-anteater")
    assert (args.max_steps, args.per_device_train_batch_size * args.gradient_accumulation_steps * 64) == (1600, 384)
    _, args, _ = load(dpo, "dpo")
    assert (args.num_train_epochs, args.learning_rate, args.beta, args.weight_decay, args.eval_steps) == \
        (7, 2e-7, 1e-3, 0.1, 25)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 64 == 128
    it, data, args, _ = load(iterative_dpo, "iterative-dpo")
    assert (it.max_prompts, it.num_samples, it.sample_temperature, it.sample_top_p) == (20000, 10, 0.7, 0.9)
    assert (args.num_train_epochs, args.beta, args.learning_rate) == (3, 1e-3, 9e-8)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * it.round_num_processes == 128


def load(module, name, experiment="llama3-70b"):
    return module.parse(["--config", str(REPO / "recipes" / experiment / f"{name}.yaml"), "--bf16", "false"])


@pytest.mark.ppo
def test_paper_values_in_ppo_recipe():
    from hs2trl.stages import ppo

    data, args, _ = load(ppo, "ppo")
    assert (args.learning_rate, args.kl_coef, args.max_steps, args.eval_steps) == (1e-7, 3e-3, 64, 4)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 64 == 128
    assert args.num_mini_batches == 1 and data.reward_weights == "goodness"


# ------------------------------------------------------------------ end to end, through the CLI


@pytest.mark.slow
def test_sft_two_ranks(tmp_path, tiny_lm_dir, tokenizer):
    data = write_jsonl(tmp_path / "hs.jsonl", helpsteer_rows(4))
    out = tmp_path / "sft"
    result = run_hs2("sft", "--model", tiny_lm_dir, "--dataset", data, "--output-dir", str(out), "--max_steps", "2",
                     "--per_device_train_batch_size", "2", "--num-processes", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "hs2: training SFTTrainer on 2 process(es) (world size 2)" in result.stdout
    # the demo recipe trains on the helpful responses only (min_helpfulness 3), and says how many it left out
    assert "4 training and 0 evaluation rows left out: helpfulness below 3" in result.stdout
    assert "SFT on 4 conversations" in result.stdout
    assert_saved_policy(out, tokenizer)


@pytest.mark.slow
def test_dpo(tmp_path, tiny_lm_dir, tokenizer):
    from hs2trl.data.pairs import helpsteer2_pairs
    from hs2trl.data.sources import read_records

    pairs = tmp_path / "pairs.jsonl"  # as `hs2 data to-dpo` writes them (tested in test_align_data.py)
    write_jsonl(pairs, helpsteer2_pairs(read_records(write_jsonl(tmp_path / "hs.jsonl", helpsteer_rows(4)))).pairs)
    out = tmp_path / "dpo"
    result = run_hs2("dpo", "--model", tiny_lm_dir, "--dataset", str(pairs), "--output-dir", str(out),
                     "--max_steps", "2", "--per_device_train_batch_size", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DPO on 4 pairs" in result.stdout and "world size 1" in result.stdout
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    assert state["global_step"] == 2
    assert_saved_policy(out, tokenizer)


@pytest.mark.slow
def test_iterative_dpo_rounds_and_resume(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file):
    import os
    import subprocess
    import sys

    from tests.helpers.fake_hub import FakeHub

    out = tmp_path / "it"
    args = ["dpo", "--iterative", "--model", tiny_lm_dir, "--reward-model", tiny_rm_dir, "--dataset", helpsteer_file,
            "--rounds", "2", "--num-samples", "2", "--output-dir", str(out), "--max_new_tokens", "8",
            "--max_prompts", "3"]
    with FakeHub() as hub:  # --push-to-hub against a local stand-in of the Hub API: one revision per round
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HUB_DISABLE_PROGRESS_BARS="1")
        result = subprocess.run([sys.executable, "-m", "hs2trl.cli", *args, "--push-to-hub", "--hub-model-id",
                                 "me/iterative"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for r in (1, 2):
        files = hub.uploaded("me/iterative", f"round-{r}")
        assert "model.safetensors" in files and "README.md" in files and "hs2trl_recipe.yaml" in files
    assert "3 prompts used of 8 distinct prompts in 16 rows" in result.stdout
    assert "training DPOTrainer on 1 process(es)" in result.stdout
    r1, r2 = out / "round-1", out / "round-2"
    generations, scores, pairs = lines(r1 / "generations.jsonl"), lines(r1 / "scores.jsonl"), lines(r1 / "pairs.jsonl")
    assert sorted(g["id"] for g in generations) == [0, 1, 2] and all(len(g["responses"]) == 2 for g in generations)
    assert all(len(s["goodness"]) == 2 and len(s["attributes"][0]) == 5 for s in scores)
    by_id = {s["id"]: s["goodness"] for s in scores}
    for p in pairs:  # chosen is the higher-goodness sample
        assert p["score_chosen"] == max(by_id[p["id"]]) > p["score_rejected"] == min(by_id[p["id"]])
    done1, done2 = json.loads((r1 / "DONE").read_text()), json.loads((r2 / "DONE").read_text())
    assert done1["pairs"] == len(pairs) and done1["policy"] == tiny_lm_dir
    # round 2 samples from and trains round 1's model; the reference stays the original model
    assert done2["policy"] == str(r1 / "model") and done1["reference"] == done2["reference"] == tiny_lm_dir
    assert (r1 / "model" / "model.safetensors").is_file() and (r2 / "model" / "model.safetensors").is_file()
    assert lines(r2 / "generations.jsonl")[0]["prompt"] == generations[0]["prompt"]  # same fixed prompts

    # a rerun finds every round done and redoes nothing
    stamp = (r1 / "generations.jsonl").stat().st_mtime_ns
    result = run_hs2(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round-1: done already" in result.stdout and "round-2: done already" in result.stdout
    assert "resuming with the 3 prompts fixed in" in result.stdout
    assert (r1 / "generations.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.ppo
def test_ppo(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file, tokenizer):
    import shutil

    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)  # the stage stores the measured normalisation next to the RM
    out = tmp_path / "ppo"
    result = run_hs2("ppo", "--model", tiny_lm_dir, "--reward-model", str(rm), "--dataset", helpsteer_file,
                     "--output-dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
                     "--response_length", "8", "--local_rollout_forward_batch_size", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "has no stored 'goodness' normalisation: measuring it on the 16 responses" in result.stdout
    info = json.loads((rm / "hs2trl_reward.json").read_text())["normalization"]["goodness"]
    assert info["n"] == 16 and info["std"] > 0
    assert "train: 8 distinct prompts from 16 rows" in result.stdout
    assert "1 steps x rollout batch 2 = 2 episodes" in result.stdout
    assert "hs2: training PPOTrainer on 1 process(es)" in result.stdout
    assert_saved_policy(out, tokenizer)


@pytest.mark.slow
def test_cli_mistake_is_one_line(tiny_lm_dir, helpsteer_file):
    result = run_hs2("dpo", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--rounds", "2")
    assert result.returncode == 2 and result.stderr.strip() == "hs2: error: --rounds: only with --iterative"


@pytest.mark.ppo
def test_ppo_checks_fail_fast(tmp_path, tiny_lm_dir, tiny_rm_dir):
    from hs2trl.stages import ppo

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q1"}, {"prompt": "Q2"}])
    with pytest.raises(Hs2Error, match="no reward model given"):
        ppo.check(*ppo.parse(["--model_name_or_path", tiny_lm_dir, "--dataset_name", data, "--bf16", "false"]))
    with pytest.raises(Hs2Error, match="no responses to measure the reward normalisation on"):
        ppo.check(*ppo.parse(["--config", str(REPO / "recipes/demo/ppo.yaml"), "--model_name_or_path", tiny_lm_dir,
                              "--reward_model_path", tiny_rm_dir, "--dataset_name", data, "--output_dir",
                              str(tmp_path / "o")]))


def test_stage_checks_fail_fast(tmp_path, tiny_lm_dir, tiny_rm_dir):
    from hs2trl.stages import iterative_dpo

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q1"}, {"prompt": "Q2"}])
    with pytest.raises(Hs2Error, match="num_samples: at least 2"):
        iterative_dpo.check(*iterative_dpo.parse([
            "--config", str(REPO / "recipes/demo/iterative-dpo.yaml"), "--model_name_or_path", tiny_lm_dir,
            "--reward_model_path", tiny_rm_dir, "--dataset_name", data, "--num_samples", "1"]))
