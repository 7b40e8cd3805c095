"""SteerLM2Trainer on a tiny Llama: data preparation, the batch layout, and that training moves the policy towards the
highest-weight response."""

from __future__ import annotations

import pytest
import torch

from hs2trl.runtime.errors import Hs2Error

pytestmark = pytest.mark.trl_internals  # also run on TRL 1.12 by make test-trl112

ATTRIBUTES = {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2}
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
RESPONSES = ["The capital of France is Paris.", "London.", "I do not know, maybe Berlin or Rome?"]


def _args(tmp_path, **overrides):
    from hs2trl.trainers.steerlm2_config import SteerLM2Config

    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_steps=6, learning_rate=3e-3,
                  lr_scheduler_type="constant", logging_steps=1, report_to="none", save_strategy="no", bf16=False,
                  use_cpu=True, seed=0)
    kwargs.update(overrides)
    return SteerLM2Config(**kwargs)


def _policy_logps(model, tokenizer):
    from hs2trl.steer.sampling import group_logps

    model.eval()
    row = {"prompt": PROMPT, "attributes": ATTRIBUTES, "responses": RESPONSES}
    return torch.tensor(group_logps(model, tokenizer, [row], True, list(ATTRIBUTES), 8)[0])


def test_collator_marks_response_tokens_through_end_of_turn(tokenizer):
    from hs2trl.data.chat import encode_conversation, end_of_turn_id
    from hs2trl.steer.groups import DataCollatorForSteerLM2, tokenize_group
    from hs2trl.steer.steering import condition

    prompt_ids, response_ids = tokenize_group(tokenizer, PROMPT, ATTRIBUTES, RESPONSES)
    eot = end_of_turn_id(tokenizer)
    for text, ids in zip(RESPONSES, response_ids):
        assert ids[-1] == eot  # y ends with <|im_end|>
        assert prompt_ids + ids == encode_conversation(tokenizer, condition(PROMPT, ATTRIBUTES) + [
            {"role": "assistant", "content": text}])
        assert tokenizer.decode(ids[:-1]) == text
    plain_ids, plain_responses = tokenize_group(tokenizer, PROMPT, ATTRIBUTES, RESPONSES, conditioned=False)
    assert plain_responses == response_ids and plain_ids != prompt_ids  # same y, prompt without the attributes
    assert "helpfulness:4" not in tokenizer.decode(plain_ids) and "helpfulness:4" in tokenizer.decode(prompt_ids)

    example = {"prompt_ids": prompt_ids, "response_ids": response_ids, "log_weights": [0.0, 1.0, 2.0],
               "steerlm_logps": [-1.0, -2.0, -3.0]}
    batch = DataCollatorForSteerLM2(tokenizer.pad_token_id)([example, example])
    assert batch["input_ids"].shape[0] == 6 and batch["log_weights"].shape == (2, 3)
    for row, ids in enumerate(response_ids * 2):
        mask = batch["response_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == ids
        assert batch["response_lengths"].view(-1)[row].item() == len(ids)
    with pytest.raises(ValueError, match="same number of responses"):
        DataCollatorForSteerLM2(tokenizer.pad_token_id)([example, {**example, "response_ids": response_ids[:2]}])


def test_response_logps_equal_full_logit_log_probs(tiny_lm_dir, tokenizer):
    """The LM head runs only from the first response token on; the sums equal those from the full logits."""
    from transformers import AutoModelForCausalLM

    from hs2trl.steer.groups import DataCollatorForSteerLM2, tokenize_group
    from hs2trl.steer.objective import response_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    short = [{"role": "user", "content": "Hi"}]
    examples = [{"prompt_ids": p, "response_ids": r, "log_weights": [0.0] * 3, "steerlm_logps": [0.0] * 3}
                for p, r in (tokenize_group(tokenizer, m, ATTRIBUTES, RESPONSES) for m in (PROMPT, short))]
    batch = DataCollatorForSteerLM2(tokenizer.pad_token_id)(examples)  # two prompt lengths, right padding
    with torch.no_grad():
        ours = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    expected = (full * batch["response_mask"][:, 1:]).sum(-1)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
    assert (ours < 0).all()


def test_toy_training_raises_the_likelihood_of_the_highest_weight_sample(tiny_lm_dir, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    before = _policy_logps(model, tokenizer)
    # Q' = the initial policy (b' uniform at the start), P(y|x) = Q', so w' = softmax(log P(a|x,y)): sample 0 wins.
    row = {"prompt": PROMPT, "attributes": ATTRIBUTES, "responses": RESPONSES, "steerlm_logps": before.tolist(),
           "sft_logps": before.tolist(), "attribute_logps": [0.0, -6.0, -6.0]}
    trainer = SteerLM2Trainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_list([row]),
                              processing_class=tokenizer)
    trainer.train()
    after = _policy_logps(trainer.model, tokenizer)
    gain = after - before
    assert gain[0] > 0 and gain[0] > gain[1] and gain[0] > gain[2]
    b = torch.softmax(after - before, -1)  # b' after training: mass moved to the highest-weight sample
    assert b[0] > 0.5
    logs = [entry for entry in trainer.state.log_history if "kl" in entry]
    assert logs[0]["kl"] > logs[-1]["kl"]  # KL(w' || b') falls as b' approaches w'
    assert logs[0]["kl"] == pytest.approx(
        float((torch.softmax(torch.tensor([0.0, -6.0, -6.0]), -1)
               * (torch.log_softmax(torch.tensor([0.0, -6.0, -6.0]), -1) + torch.log(torch.tensor(3.0)))).sum()),
        rel=1e-3)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))  # a plain causal LM
    torch.testing.assert_close(_policy_logps(reloaded, tokenizer), after, atol=1e-4, rtol=0)


def test_length_normalization_divides_by_the_mean_response_length(tiny_lm_dir, tokenizer, tmp_path):
    from datasets import Dataset

    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    row = {"prompt": PROMPT, "attributes": ATTRIBUTES, "responses": RESPONSES, "steerlm_logps": [-50.0, -20.0, -70.0],
           "sft_logps": [-40.0, -20.0, -60.0], "attribute_logps": [-1.0, -5.0, -3.0]}
    losses = {}
    for normalise in (False, True):
        trainer = SteerLM2Trainer(model=tiny_lm_dir, args=_args(tmp_path, length_normalization=normalise),
                                  train_dataset=Dataset.from_list([row]), processing_class=tokenizer)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
        losses[normalise] = trainer.compute_loss(trainer.model, batch).item()
        mean_length = batch["response_lengths"].mean().item()
    assert losses[True] == pytest.approx(losses[False] / mean_length, rel=1e-5)


def test_bad_sampled_rows_are_one_line_errors(tiny_lm_dir, tokenizer, tmp_path):
    from datasets import Dataset

    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    good = {"prompt": PROMPT, "attributes": ATTRIBUTES, "responses": RESPONSES[:2], "steerlm_logps": [-1.0, -2.0],
            "sft_logps": [-1.0, -2.0], "attribute_logps": [-1.0, -2.0]}
    cases = [
        ({**good, "sft_logps": [-1.0]}, "field 'sft_logps': expected 2 numbers"),
        ({**good, "attribute_logps": [float("nan"), 0.0]}, "finite"),
        ({**good, "responses": ["only one"], "steerlm_logps": [0.0], "sft_logps": [0.0], "attribute_logps": [0.0]},
         "at least 2"),
    ]
    for bad, message in cases:
        with pytest.raises(Hs2Error, match=message):
            SteerLM2Trainer(model=tiny_lm_dir, args=_args(tmp_path), train_dataset=Dataset.from_list([good, bad]),
                            processing_class=tokenizer)
    three = {**good, "responses": RESPONSES, "steerlm_logps": [0.0] * 3, "sft_logps": [0.0] * 3,
             "attribute_logps": [0.0] * 3}
    with pytest.raises(Hs2Error, match="different numbers of responses"):
        SteerLM2Trainer(model=tiny_lm_dir, args=_args(tmp_path), train_dataset=Dataset.from_list([good, three]),
                        processing_class=tokenizer)
