"""PreferenceRewardTrainer (bt, margin_bt, scaled_bt) and `hs2 train-rm --loss` on a hand-made HelpSteer2-Preference
file: the losses, padded and packed batches, the real CLI, regression then BT, and `--init-head`."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from hs2trl.rm.attributes import WEIGHT_PRESETS
from hs2trl.rm.loading import load_reward_model
from hs2trl.rm.rewards import fold_to_one_output, head_weights
from hs2trl.rm.scoring import score_conversations
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.recipes import resolve_recipe
from hs2trl.trainers import DataCollatorForPreferencePairs, PreferenceRewardConfig, PreferenceRewardTrainer
from hs2trl.trainers.preference_trainer import preference_loss
from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fixtures import ATTRS, write_jsonl

pytestmark = pytest.mark.trl_internals  # a RewardTrainer subclass: also run on TRL 1.12 by make test-trl112

ONE_STEP = ["--learning_rate", "0", "--max_steps", "1", "--logging_steps", "1", "--seed", "7"]


def preference_rows(strengths=(-2, 2, -2, 2, -2, 2, -2, 2)) -> list[dict]:
    """HelpSteer2-Preference rows (one multi-turn prompt); a negative strength means response 1 is better."""
    rows = []
    for i, s in enumerate(strengths):
        prompt = f"What is {i} + {i}?"
        if i == 1:
            prompt = f"Hi!\n<extra_id_1>Assistant\nHello, how can I help?\n<extra_id_1>User\n{prompt}"
        good, bad = f"{i} + {i} = {2 * i}. Adding a number to itself doubles it.", f"It is {2 * i + 1}."
        first, second = (good, bad) if s <= 0 else (bad, good)
        rows.append({"prompt": prompt, "response_1": first, "response_2": second, "preference_strength": s,
                     "split": "train"})
    return rows


def swapped(rows: list[dict]) -> list[dict]:
    return [{**r, "response_1": r["response_2"], "response_2": r["response_1"],
             "preference_strength": -r["preference_strength"]} for r in rows]


def logged(output_dir) -> dict:
    """The first training log entry (loss and TRL's metrics) of a run, from its checkpoint's trainer state."""
    (state,) = glob.glob(f"{output_dir}/checkpoint-*/trainer_state.json")
    return next(h for h in json.loads(Path(state).read_text())["log_history"] if "loss" in h)


def run_stage(argv: list[str]) -> None:
    """The train_rm stage in this process, as `hs2 train-rm` runs it (parse once, check, main)."""
    from hs2trl.stages import train_rm

    parsed = train_rm.parse(["--config", resolve_recipe("demo/rm"), *argv])
    train_rm.check(*parsed)
    train_rm.main(*parsed)


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("pref") / "helpsteer2_preference.jsonl", preference_rows())


# ------------------------------------------------------------------------------------------------------- the losses
def test_losses_follow_the_formulas():
    chosen, rejected, m = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, 0.5, 2.5]), torch.tensor([1.0, 2.0, 3.0])
    delta = chosen - rejected
    bt = torch.log1p(torch.exp(-delta))  # -log σ(Δ), written another way
    torch.testing.assert_close(preference_loss(chosen, rejected, m, "bt"), bt)
    torch.testing.assert_close(preference_loss(chosen, rejected, m, "scaled_bt"), m * bt)
    torch.testing.assert_close(preference_loss(chosen, rejected, m, "margin_bt"), torch.log1p(torch.exp(m - delta)))
    with pytest.raises(ValueError, match="hinge"):
        preference_loss(chosen, rejected, m, "hinge")


def test_config_refuses_an_unknown_loss(tmp_path):
    with pytest.raises(Hs2Error, match="loss: 'hinge' is not one of bt, margin_bt, scaled_bt"):
        PreferenceRewardConfig(output_dir=str(tmp_path), loss="hinge", bf16=False, report_to=[])
    config = PreferenceRewardConfig(output_dir=str(tmp_path), bf16=False, report_to=[])
    assert config.loss == "scaled_bt" and config.metric_for_best_model == "eval_loss"
    assert config.greater_is_better is False


def test_collator_puts_chosen_then_rejected_in_one_batch():
    rows = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4]}, {"chosen_ids": [5], "rejected_ids": [6, 7], "margin": 3}]
    padded = DataCollatorForPreferencePairs(pad_token_id=0)(rows)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0], [4, 0, 0], [6, 7, 0]]
    assert padded["end_index"].tolist() == [2, 0, 0, 1] and padded["margin"].tolist() == [1.0, 3.0]
    packed = DataCollatorForPreferencePairs(pad_token_id=0, padding_free=True)(rows)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 5, 4, 6, 7]] and packed["end_index"].tolist() == [2, 3, 4, 6]


# ------------------------------------------------------------------------------------------------------- the trainer
def trainer_args(tmp_path, **overrides) -> PreferenceRewardConfig:
    kwargs = dict(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, learning_rate=0.0,
        logging_steps=1, report_to=[], bf16=False, gradient_checkpointing=False, save_strategy="no", seed=0,
        dataloader_pin_memory=False,
    )
    kwargs.update(overrides)
    return PreferenceRewardConfig(**kwargs)


def trl_rows(rows) -> Dataset:
    from hs2trl.data.preference import preference_pairs, trl_row
    from hs2trl.data.records import Record

    pairs, _ = preference_pairs([Record("mem", i + 1, r) for i, r in enumerate(rows)])
    return Dataset.from_list([trl_row(p) for p in pairs])


def test_packed_and_padded_batches_give_the_same_loss_and_read_the_stock_position(tmp_path, tiny_lm_dir, tokenizer):
    from hs2trl.data.chat import end_of_turn_id

    results = {}
    for padding_free in (True, False):
        trainer = PreferenceRewardTrainer(tiny_lm_dir, trainer_args(tmp_path, padding_free=padding_free),
                                          train_dataset=trl_rows(preference_rows()), processing_class=tokenizer)
        assert trainer.padding_free is padding_free
        trainer.train()
        results[padding_free] = next(h for h in trainer.state.log_history if "loss" in h)
    assert results[True]["loss"] == pytest.approx(results[False]["loss"], rel=1e-5)
    assert results[True]["margin"] == pytest.approx(results[False]["margin"], abs=1e-5)
    assert {"accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens"} <= set(results[True])

    # Every sequence ends on the end-of-turn token, so the padded reading is the model's own (rightmost non-pad).
    rows = [trainer.train_dataset[i] for i in range(4)]
    assert all(r["chosen_ids"][-1] == r["rejected_ids"][-1] == end_of_turn_id(tokenizer) for r in rows)
    batch = DataCollatorForPreferencePairs(tokenizer.pad_token_id)(rows)
    model = trainer.model.eval()
    with torch.no_grad():
        stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        torch.testing.assert_close(trainer.rewards(model, batch), stock)


def test_trainer_refuses_a_multi_output_model(tmp_path, tiny_rm_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir)
    with pytest.raises(ValueError, match="num_labels=5"):
        PreferenceRewardTrainer(model, trainer_args(tmp_path), train_dataset=trl_rows(preference_rows()),
                                processing_class=tokenizer)


def test_fold_to_one_output_gives_the_weighted_sum(tiny_rm_dir):
    conversations = [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]]
    five, tokenizer, attributes = load_reward_model(tiny_rm_dir)
    expected = score_conversations(five, tokenizer, conversations) @ torch.tensor(WEIGHT_PRESETS["goodness"])
    assert head_weights(attributes, "helpfulness") == (1.0, 0.0, 0.0, 0.0, 0.0)
    one = fold_to_one_output(five, head_weights(attributes, "goodness"), "goodness")
    assert one.config.num_labels == 1 and one.config.id2label == {0: "goodness"}
    torch.testing.assert_close(score_conversations(one, tokenizer, conversations)[:, 0], expected, atol=1e-5, rtol=0)
    with pytest.raises(Hs2Error, match="neither an output"):
        head_weights(attributes, "helpfulnes")


# ------------------------------------------------------------------------------------------------- the real CLI
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_lm_dir, pref_file):
    """`hs2 train-rm --loss ...` through the real entry point: scaled_bt and bt on the same file and seed, and
    scaled_bt on the file with responses swapped and strengths negated."""
    tmp = tmp_path_factory.mktemp("cli")
    swapped_file = write_jsonl(tmp / "swapped.jsonl", swapped(preference_rows()))
    runs = {"scaled_bt": ("scaled_bt", pref_file), "bt": ("bt", pref_file), "swapped": ("scaled_bt", swapped_file)}
    commands = [["train-rm", "--loss", loss, "--model", tiny_lm_dir, "--dataset", data, "--output-dir",
                 str(tmp / name), *ONE_STEP] for name, (loss, data) in runs.items()]
    procs = run_cli_batch(commands)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: (tmp / name, proc) for name, proc in zip(runs, procs)}


@pytest.mark.slow
def test_cli_saves_a_one_output_sequence_classification_model(cli_runs):
    out, proc = cli_runs["scaled_bt"]
    assert "hs2: loss scaled_bt: starting from a fresh head" in proc.stdout
    assert "8 preference pairs from 8 rows (0 ties dropped; strengths -2: 4, +2: 4)" in proc.stdout
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and torch.isfinite(model.score.weight).all()


@pytest.mark.slow
def test_scaled_bt_loss_is_twice_bt_with_every_strength_two(cli_runs):
    scaled, bt = logged(cli_runs["scaled_bt"][0])["loss"], logged(cli_runs["bt"][0])["loss"]
    assert bt > 0 and scaled == pytest.approx(2 * bt, rel=1e-6)


@pytest.mark.slow
def test_swapping_responses_and_negating_strengths_changes_nothing(cli_runs):
    original, flipped = logged(cli_runs["scaled_bt"][0]), logged(cli_runs["swapped"][0])
    for key in ("loss", "accuracy", "margin", "min_reward", "max_reward"):
        assert flipped[key] == pytest.approx(original[key], rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_bad_loss_is_one_line(tmp_path, tiny_lm_dir, tiny_rm_dir, pref_file, helpsteer_file):
    out = str(tmp_path / "out")
    cases = [
        (["--loss", "scaled_bt", "--dataset", helpsteer_file],
         [helpsteer_file, "row 1", "field 'response'", "--loss scaled_bt needs preference pairs"]),
        (["--loss", "regression", "--dataset", pref_file],
         [pref_file, "row 1", "field 'preference_strength'", "--loss regression"]),
        (["--dataset", pref_file], [pref_file, "row 1", "field 'preference_strength'", "--loss"]),
        (["--loss", "hinge", "--dataset", pref_file], ["loss", "'hinge'", "regression", "scaled_bt"]),
        (["--loss", "bt", "--dataset", pref_file, "--model", tiny_rm_dir], ["5-output reward model", "--init-head"]),
        (["--loss", "bt", "--dataset", pref_file, "--model", tiny_rm_dir, "--init-head", "helpfulnes"],
         ["init_head", "'helpfulnes' is neither an output"]),
        (["--loss", "bt", "--dataset", pref_file, "--init-head", "helpfulness"], ["init_head", "no sequence-class"]),
    ]
    procs = run_cli_batch([["train-rm", "--model", tiny_lm_dir, "--output-dir", out, "--max_steps", "1", *args]
                           for args, _ in cases])
    for (args, expect), proc in zip(cases, procs):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr[-2000:])
        assert lines[0].startswith("hs2: error: ") and all(e in lines[0] for e in expect), (args, lines[0])


# ------------------------------------------------------------------------- in this process: the stage's own code
def test_margin_bt_loss_is_the_formula_on_the_logged_rewards(tmp_path, tiny_lm_dir, pref_file):
    out = tmp_path / "margin"
    run_stage(["--loss", "margin_bt", "--model_name_or_path", tiny_lm_dir, "--dataset_name", pref_file,
               "--output_dir", str(out), "--per_device_train_batch_size", "1", *ONE_STEP])
    log = logged(out)  # one pair: TRL's `margin` metric is its r_c - r_r; min/max are its two rewards
    assert log["max_reward"] - log["min_reward"] == pytest.approx(abs(log["margin"]), abs=1e-6)
    assert log["loss"] == pytest.approx(-F.logsigmoid(torch.tensor(log["margin"] - 2.0)).item(), rel=1e-5)
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


def test_evaluation_reports_pairwise_metrics_and_keeps_the_best_checkpoint_by_eval_loss(tmp_path, tiny_lm_dir,
                                                                                         pref_file, capsys):
    out = tmp_path / "eval"
    run_stage(["--loss", "scaled_bt", "--model_name_or_path", tiny_lm_dir, "--dataset_name", pref_file,
               "--output_dir", str(out), "--eval_fraction", "0.25", "--max_steps", "2", "--eval_steps", "1",
               "--save_steps", "1", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2"])
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"eval_loss", "eval_accuracy", "eval_margin", "eval_mean_reward"} <= set(metrics)
    assert "hs2: validation: pairwise accuracy" in capsys.readouterr().out
    state = json.loads(Path(sorted(glob.glob(f"{out}/checkpoint-*/trainer_state.json"))[-1]).read_text())
    evals = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    assert len(evals) == 2 and state["best_metric"] == pytest.approx(min(evals))


def test_regression_then_scaled_bt_keeps_the_stage_1_head(tmp_path, tiny_lm_dir, pref_file, helpsteer_file, capsys):
    stage1, stage2 = tmp_path / "helpfulness", tmp_path / "scaled"
    run_stage(["--attributes", "helpfulness", "--model_name_or_path", tiny_lm_dir, "--dataset_name", helpsteer_file,
               "--output_dir", str(stage1), "--max_steps", "2", "--per_device_train_batch_size", "4"])
    first = AutoModelForSequenceClassification.from_pretrained(stage1)
    assert first.config.num_labels == 1 and first.config.id2label == {0: "helpfulness"}
    run_stage(["--loss", "scaled_bt", "--model_name_or_path", str(stage1), "--dataset_name", pref_file,
               "--output_dir", str(stage2), *ONE_STEP])
    said = capsys.readouterr().out
    assert "hs2: loss scaled_bt: starting from the model's own 1-output head ('helpfulness')" in said
    second = AutoModelForSequenceClassification.from_pretrained(stage2)
    assert second.config.num_labels == 1
    torch.testing.assert_close(second.score.weight, first.score.weight, rtol=0, atol=0)  # not re-initialised


def test_init_head_takes_one_head_of_a_five_head_model(tmp_path, tiny_rm_dir, pref_file, capsys):
    out = tmp_path / "from-helpfulness"
    run_stage(["--loss", "bt", "--init_head", "helpfulness", "--model_name_or_path", tiny_rm_dir, "--dataset_name",
               pref_file, "--output_dir", str(out), *ONE_STEP])
    assert "starting from head 'helpfulness' (output 1 of 5)" in capsys.readouterr().out
    conversations = [[{"role": "user", "content": f"What is {i} + {i}?"},
                      {"role": "assistant", "content": f"It is {2 * i}."}] for i in range(4)]
    five, tokenizer, attributes = load_reward_model(tiny_rm_dir)
    one, _, _ = load_reward_model(str(out))
    assert attributes == ATTRS and one.config.num_labels == 1
    expected = score_conversations(five, tokenizer, conversations)[:, ATTRS.index("helpfulness")]
    got = score_conversations(one, tokenizer, conversations)[:, 0]
    assert not math.isclose(float(expected.std()), 0.0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
