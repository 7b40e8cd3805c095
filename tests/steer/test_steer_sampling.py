"""SteerLM 2.0 sampling stage on tiny models: the three log-probabilities are what they claim to be, and a killed run
resumes without redoing finished prompts."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.fixtures import write_jsonl

TARGET = "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2"
ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


@pytest.fixture
def prompts_file(tmp_path):
    rows = [
        {"prompt": "What is 2 + 2?", "response": "4", "helpfulness": 4, "correctness": 4, "coherence": 4,
         "complexity": 1, "verbosity": 1},
        {"prompt": "What is 2 + 2?", "response": "5", "helpfulness": 0, "correctness": 0, "coherence": 3,
         "complexity": 1, "verbosity": 1},  # same prompt: sampled once
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                      {"role": "assistant", "content": "Blue."}]},
        {"conversations": [{"from": "User", "value": "Hi"}, {"from": "Assistant", "value": "Hello!"},
                           {"from": "User", "value": "Count to three."}, {"from": "Assistant", "value": "1 2 3"}],
         "system": ""},
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def _sample(prompts, folder, tiny_lm_dir, tiny_rm_dir, chunk_size=8):
    from hs2trl.steer.sampling import sample_iteration

    return sample_iteration(prompts, folder, policy=tiny_lm_dir, sft_model=tiny_lm_dir, reward_model=tiny_rm_dir,
                            attributes=ATTRS, num_samples=2, temperature=0.7, top_p=0.9, max_new_tokens=6,
                            generation_batch_size=8, scoring_batch_size=8, chunk_size=chunk_size, dtype="float32",
                            seed=0)


def test_load_prompts_distinct_and_targets(prompts_file):
    from hs2trl.runtime.errors import Hs2Error
    from hs2trl.steer.sampling import load_prompts

    prompts = load_prompts(prompts_file, "train", TARGET, ATTRS)
    assert [p["prompt"][-1]["content"] for p in prompts] == ["What is 2 + 2?", "Name a colour.", "Count to three."]
    assert prompts[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert all(p["attributes"] == dict(zip(ATTRS, [4, 4, 4, 2, 2])) for p in prompts)
    subset = load_prompts(prompts_file, "train", TARGET, ATTRS, max_prompts=2, seed=1)
    assert len(subset) == 2 and subset == load_prompts(prompts_file, "train", TARGET, ATTRS, max_prompts=2, seed=1)
    # per-row targets: the row's own levels (first row of a repeated prompt)
    with pytest.raises(Hs2Error, match="row 3.*needs every attribute"):
        load_prompts(prompts_file, "train", "dataset", ATTRS)


def test_sampling_writes_the_three_log_probabilities(prompts_file, tmp_path, tiny_lm_dir, tiny_rm_dir):
    from transformers import AutoModelForCausalLM

    from hs2trl.data.chat import encode_prompt
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations
    from hs2trl.runtime.models import load_tokenizer
    from hs2trl.steer.groups import tokenize_group
    from hs2trl.steer.objective import attribute_log_likelihood
    from hs2trl.steer.sampling import load_prompts, read_samples, sequence_logps

    prompts = load_prompts(prompts_file, "train", TARGET, ATTRS)
    path = _sample(prompts, tmp_path / "it0", tiny_lm_dir, tiny_rm_dir)
    rows = read_samples(path)
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    assert not (tmp_path / "it0" / "parts").exists()
    tokenizer = load_tokenizer(tiny_lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    rm, rm_tok, _ = load_reward_model(tiny_rm_dir)
    for row in rows:
        assert len(row["responses"]) == 2 and row["attributes"] == dict(zip(ATTRS, [4, 4, 4, 2, 2]))
        cond_ids, response_ids = tokenize_group(tokenizer, row["prompt"], row["attributes"], row["responses"])
        plain_ids = encode_prompt(tokenizer, row["prompt"])  # the SFT model sees no attribute string
        q = sequence_logps(lm, tokenizer.pad_token_id, [cond_ids] * 2, response_ids)
        p = sequence_logps(lm, tokenizer.pad_token_id, [plain_ids] * 2, response_ids)
        assert row["steerlm_logps"] == pytest.approx(q, abs=1e-3)
        assert row["sft_logps"] == pytest.approx(p, abs=1e-3)
        assert row["steerlm_logps"] != pytest.approx(row["sft_logps"], abs=1e-3)  # conditioning changes the prompt
        predictions = score_conversations(rm, rm_tok, [row["prompt"] + [{"role": "assistant", "content": y}]
                                                       for y in row["responses"]])
        expected = attribute_log_likelihood(predictions, torch.tensor([[4, 4, 4, 2, 2]] * 2))
        assert row["attribute_logps"] == pytest.approx(expected.tolist(), abs=1e-3)


def test_sampling_resumes_after_a_kill(prompts_file, tmp_path, tiny_lm_dir, tiny_rm_dir):
    from hs2trl.steer.sampling import load_prompts, read_samples

    prompts = load_prompts(prompts_file, "train", TARGET, ATTRS)
    folder = tmp_path / "it0"
    parts = folder / "parts"
    parts.mkdir(parents=True)
    # A killed run: the first prompt sampled, the second torn mid-line; no later pass started.
    kept = {"id": prompts[0]["id"], "prompt": prompts[0]["prompt"], "attributes": prompts[0]["attributes"],
            "responses": ["kept answer one", "kept answer two"]}
    (parts / "generate.rank0.jsonl").write_text(json.dumps(kept) + "\n" + '{"id": "' + prompts[1]["id"] + '", "pro')
    rows = read_samples(_sample(prompts, folder, tiny_lm_dir, tiny_rm_dir, chunk_size=1))
    assert len(rows) == len(prompts)
    assert rows[0]["responses"] == kept["responses"]  # not sampled again
    assert all(len(r["responses"]) == 2 for r in rows[1:])
    # Parts written for other prompts (data, seed or targets changed) are refused, not silently mixed in.
    from hs2trl.runtime.errors import Hs2Error

    (folder / "samples.jsonl").unlink()
    parts.mkdir()
    other = {**kept, "prompt": [{"role": "user", "content": "another question"}]}
    (parts / "generate.rank0.jsonl").write_text(json.dumps(other) + "\n")
    with pytest.raises(Hs2Error, match="differs from the one sampled before"):
        _sample(prompts, folder, tiny_lm_dir, tiny_rm_dir)
