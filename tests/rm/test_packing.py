"""Performance paths that must not change results: packed (padding-free) batches, the packed attention, sorted
scoring. No timing assertions here (timings are `make bench`)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tests.helpers.fixtures import ATTRS, tiny_llama_config


def _tiny_rm(tokenizer, attn="sdpa", seed=0):
    from transformers import LlamaForSequenceClassification

    from hs2trl.rm.modeling import reward_config_kwargs

    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, **reward_config_kwargs(ATTRS))
    config._attn_implementation = attn
    return LlamaForSequenceClassification(config).eval()


def _random_sequences(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 1000, (n,), generator=g) for n in lengths]


def _reference(model, sequences):
    """One sequence at a time, no padding at all, through the model's own pooling."""
    with torch.no_grad():
        return torch.cat([model(input_ids=s[None]).logits for s in sequences])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_padded_equals_one_by_one(tokenizer, attn):
    from hs2trl.packing import PACKED_ATTENTION, pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.head import end_logits

    model = _tiny_rm(tokenizer, attn)
    sequences = _random_sequences([7, 3, 12, 1, 5, 9])
    expected = _reference(model, sequences)
    with torch.no_grad():
        padded = end_logits(model, pad_sequences(sequences, tokenizer.pad_token_id))
        with packed_attention(model) as ok:
            assert ok and model.config._attn_implementation == PACKED_ATTENTION
            packed = end_logits(model, pack_sequences(sequences))
            # position_ids alone (no varlen kwargs): boundaries are recovered from the positions
            bare = {k: v for k, v in pack_sequences(sequences).items() if not k.startswith(("cu_", "max_"))}
            packed_bare = end_logits(model, bare)
            # padded batches through the packed implementation still honour the attention mask
            padded_switched = end_logits(model, pad_sequences(sequences, tokenizer.pad_token_id))
    assert model.config._attn_implementation == attn  # restored
    for got in (padded, packed, packed_bare, padded_switched):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_plain_sdpa_on_a_packed_row_without_switching_would_mix_sequences(tokenizer):
    """Guards the point of the packed attention: the end logits differ when sequences are not kept apart."""
    from hs2trl.packing import pack_sequences
    from hs2trl.rm.head import end_logits

    model = _tiny_rm(tokenizer)
    sequences = _random_sequences([6, 8])
    batch = pack_sequences(sequences)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]  # one long sequence
    with torch.no_grad():
        mixed = end_logits(model, batch)
    assert not torch.allclose(mixed[1], _reference(model, sequences)[1], atol=1e-4)


def test_packed_gradients_match_padded(tokenizer):
    from hs2trl.packing import pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.head import end_logits

    sequences = _random_sequences([4, 11, 2, 8], seed=1)
    grads = []
    for packed in (False, True):
        model = _tiny_rm(tokenizer).train()
        with packed_attention(model):
            batch = pack_sequences(sequences) if packed else pad_sequences(sequences, tokenizer.pad_token_id)
            end_logits(model, batch).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_collator_packed_batch_layout(tokenizer):
    from hs2trl.trainers import DataCollatorForRegression

    rows = [{"input_ids": [5, 6, 7], "labels": [1.0] * 5}, {"input_ids": [8, 9], "labels": [None, 2.0, 2.0, 2.0, 2.0]}]
    batch = DataCollatorForRegression(tokenizer.pad_token_id, padding_free=True)(rows)
    assert next(iter(batch)) == "labels"  # Trainer's find_batch_size must see B, not the packed row's 1
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["max_length_q"] == 3
    assert batch["end_index"].tolist() == [2, 4]
    assert math.isnan(batch["labels"][1, 0])
    padded = DataCollatorForRegression(tokenizer.pad_token_id, padding_free=False)(rows)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, tokenizer.pad_token_id]]
    assert padded["end_index"].tolist() == [2, 1]


def _train(tiny_rm_dir, tmp_path, padding_free, steps=3, **extra):
    from datasets import Dataset

    from hs2trl.data.helpsteer2 import regression_examples
    from hs2trl.data.records import Record
    from hs2trl.trainers import RegressionRewardConfig, RegressionRewardTrainer
    from tests.helpers.fixtures import helpsteer_rows

    records = [Record("t", i, r) for i, r in enumerate(helpsteer_rows(8), 1)]
    args = RegressionRewardConfig(
        output_dir=str(tmp_path / f"pf{padding_free}"), per_device_train_batch_size=4, max_steps=steps,
        learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", bf16=False,
        gradient_checkpointing=False, padding_free=padding_free, train_sampling_strategy="group_by_length", seed=3,
        max_length=40, dataloader_pin_memory=False, **extra,
    )
    trainer = RegressionRewardTrainer(model=tiny_rm_dir, args=args,
                                      train_dataset=Dataset.from_list(regression_examples(records)))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, losses


def test_trainer_padding_free_same_losses_as_padded(tiny_rm_dir, tmp_path):
    padded, padded_losses = _train(tiny_rm_dir, tmp_path, False)
    packed, packed_losses = _train(tiny_rm_dir, tmp_path, True)
    assert packed.padding_free and not padded.padding_free
    assert len(packed_losses) == 3
    assert packed_losses == pytest.approx(padded_losses, rel=1e-4)
    # both count the same non-padding tokens, and the packed config never shows up in a saved model
    assert packed._total_train_tokens == padded._total_train_tokens
    assert "length" in packed.train_dataset.column_names and max(packed.train_dataset["length"]) <= 40
    packed.save_model(str(tmp_path / "saved"))
    assert "hs2_packed" not in json.dumps(json.loads((tmp_path / "saved" / "config.json").read_text()))


def test_padding_free_falls_back_for_unknown_attention(tiny_rm_dir, tmp_path, capsys):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("test_custom_attention", sdpa_attention_forward)
    trainer, losses = _train(tiny_rm_dir, tmp_path, True, steps=1,
                             model_init_kwargs={"attn_implementation": "test_custom_attention"})
    assert not trainer.padding_free and len(losses) == 1
    assert "cannot separate packed sequences" in capsys.readouterr().out


def test_liger_is_switched_off_without_gpu(tmp_path, capsys):
    from hs2trl.trainers import RegressionRewardConfig

    if torch.cuda.is_available():
        pytest.skip("GPU present: Liger stays on")
    config = RegressionRewardConfig(output_dir=str(tmp_path), use_liger_kernel=True, bf16=False)
    assert config.use_liger_kernel is False
    assert "needs a GPU" in capsys.readouterr().out


def test_scoring_keeps_input_order_and_matches_one_by_one(tokenizer):
    from hs2trl.rm.scoring import score_token_ids

    model = _tiny_rm(tokenizer)
    sequences = _random_sequences([9, 2, 14, 6, 6, 1, 11], seed=2)
    expected = _reference(model, sequences)
    got = score_token_ids(model, tokenizer.pad_token_id, [s.tolist() for s in sequences], batch_size=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_scoring_conversations_matches_plain_model(tiny_rm_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from hs2trl.data.chat import encode_conversation
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    model, tok, _ = load_reward_model(tiny_rm_dir)
    conversations = [[{"role": "user", "content": f"q{i} " * (1 + i % 4)}, {"role": "assistant", "content": "a " * i}]
                     for i in range(1, 8)]
    got = score_conversations(model, tok, conversations, batch_size=3)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()
    with torch.no_grad():
        expected = torch.cat([plain(input_ids=torch.tensor([encode_conversation(tok, c)])).logits
                              for c in conversations])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_sorted_batches_pad_less_than_unsorted():
    from hs2trl.rm.scoring import length_sorted_batches

    rng = random.Random(0)
    lengths = [rng.randint(20, 1500) for _ in range(64)]

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    unsorted = [list(range(i, min(i + 8, 64))) for i in range(0, 64, 8)]
    sorted_batches = length_sorted_batches(lengths, 8)
    assert sorted(i for b in sorted_batches for i in b) == list(range(64))
    assert padded_tokens(sorted_batches) < 0.8 * padded_tokens(unsorted)


def test_packed_attention_kernels_agree():
    """The CPU per-sequence path and the GPU fallback (re-padded, one sdpa call) compute the same attention."""
    from hs2trl.packing import _per_sequence_attention, _repadded_attention

    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    n = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = torch.randn(1, 4, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    a = _per_sequence_attention(q, k, v, cu, None, 0.0, 2)
    b = _repadded_attention(q, k, v, cu, max(lengths), None, 0.0, 2)
    assert a.shape == (1, n, 4, 8)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # and each sequence equals attention over that sequence alone
    first = torch.nn.functional.scaled_dot_product_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], is_causal=True,
                                                             enable_gqa=True)
    torch.testing.assert_close(a[:, :5], first.transpose(1, 2), atol=1e-6, rtol=1e-5)
