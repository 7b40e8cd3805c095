"""RegressionRewardTrainer on a tiny Llama with the real SmolLM2 tokenizer: loss, masking, save/reload, LoRA."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from hs2trl.data.chat import end_of_turn_id
from hs2trl.data.helpsteer2 import regression_examples
from hs2trl.data.records import Record
from hs2trl.rm.scoring import score_conversations
from hs2trl.trainers import RegressionRewardConfig, RegressionRewardTrainer
from hs2trl.trainers.regression_trainer import masked_mse
from tests.helpers.fixtures import ATTRS, helpsteer_rows

pytestmark = pytest.mark.trl_internals  # also run on TRL 1.12 by make test-trl112


def make_args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, report_to=[], bf16=False, gradient_checkpointing=False, save_strategy="no",
        eval_strategy="no", seed=0, dataloader_num_workers=0, dataloader_pin_memory=False,  # no accelerator in tests
    )
    kwargs.update(overrides)
    return RegressionRewardConfig(**kwargs)


def dataset(rows=None):
    records = [Record("mem", i + 1, r) for i, r in enumerate(rows or helpsteer_rows(4))]
    return Dataset.from_list(regression_examples(records))


def test_masked_mse_ignores_missing_scores():
    predictions = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    labels = torch.tensor([[1.0, math.nan], [2.0, 2.0]])
    assert masked_mse(predictions, labels).item() == pytest.approx((0 + 1 + 4) / 3)


def test_loss_falls(tmp_path, tiny_lm_dir):
    trainer = RegressionRewardTrainer(
        tiny_lm_dir, make_args(tmp_path, max_steps=12, learning_rate=1e-2), train_dataset=dataset()
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.6 * sum(losses[:3])


def test_head_reads_end_of_turn_token_like_the_stock_head(tmp_path, tiny_lm_dir, tokenizer):
    trainer = RegressionRewardTrainer(tiny_lm_dir, make_args(tmp_path, padding_free=False), train_dataset=dataset())
    rows = [trainer.train_dataset[i] for i in range(6)]
    assert all(r["input_ids"][-1] == end_of_turn_id(tokenizer) for r in rows)
    model = trainer.model.eval()
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        ours = trainer.end_logits(model, batch)
        stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, stock)


def test_row_with_two_attributes_trains_only_those_two(tmp_path, tiny_lm_dir):
    rows = [{"prompt": f"q{i}", "response": f"a{i}", "helpfulness": 4, "correctness": 0} for i in range(8)]
    trainer = RegressionRewardTrainer(tiny_lm_dir, make_args(tmp_path, max_steps=3), train_dataset=dataset(rows))
    before = trainer.model.score.weight.detach().clone()
    trainer.train()
    after = trainer.model.score.weight.detach()
    assert not torch.equal(before[:2], after[:2]), "helpfulness and correctness rows of the head must train"
    torch.testing.assert_close(before[2:], after[2:], rtol=0, atol=0)  # coherence, complexity, verbosity untouched


def test_save_reload_gives_identical_predictions(tmp_path, tiny_lm_dir):
    trainer = RegressionRewardTrainer(tiny_lm_dir, make_args(tmp_path, max_steps=2), train_dataset=dataset())
    trainer.train()
    trainer.save_model(str(tmp_path / "rm"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert reloaded.config.num_labels == 5
    assert [reloaded.config.id2label[i] for i in range(5)] == ATTRS
    assert reloaded.config.problem_type == "regression"
    conversations = [e["messages"] for e in regression_examples([Record("m", 1, r) for r in helpsteer_rows(3)])]
    expected = score_conversations(trainer.model.eval(), trainer.processing_class, conversations)
    actual = score_conversations(reloaded, trainer.processing_class, conversations)
    torch.testing.assert_close(actual, expected)


def test_lora_training_and_merge_keep_the_head(tmp_path, tiny_lm_dir):
    from peft import LoraConfig

    from hs2trl.runtime.training import save_final_model

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    trainer = RegressionRewardTrainer(
        tiny_lm_dir, make_args(tmp_path, max_steps=3), train_dataset=dataset(), peft_config=peft_config
    )
    initial_head = trainer.model.get_base_model().score.original_module.weight.detach().clone()
    trainer.train()
    conversations = [e["messages"] for e in regression_examples([Record("m", 1, r) for r in helpsteer_rows(3)])]
    expected = score_conversations(trainer.model.eval(), trainer.processing_class, conversations)
    save_final_model(trainer, str(tmp_path / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_labels == 5
    assert not torch.equal(merged.score.weight, initial_head), "the trained head must be in the merged model"
    torch.testing.assert_close(score_conversations(merged, trainer.processing_class, conversations), expected)
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("mode, kept", [("drop", 0), ("keep_end", 8)])
def test_over_long_rows_are_counted_and_handled(tmp_path, tiny_lm_dir, tokenizer, capsys, mode, kept):
    trainer = RegressionRewardTrainer(
        tiny_lm_dir, make_args(tmp_path, max_length=20, truncation_mode=mode), train_dataset=dataset()
    )
    assert trainer.length_report["train"] == {"rows": 8, "over_max_length": 8}
    assert len(trainer.train_dataset) == kept
    if kept:  # truncated from the left: the end-of-turn token the head reads is kept
        assert all(len(r["input_ids"]) == 20 and r["input_ids"][-1] == end_of_turn_id(tokenizer)
                   for r in trainer.train_dataset)
    assert "8 of 8 rows are longer than max_length=20" in capsys.readouterr().out
