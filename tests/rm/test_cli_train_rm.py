"""`hs2 train-rm` through the real CLI: local model + HelpSteer2 file, a 2-rank CPU run, Bradley-Terry data."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tests.helpers.fixtures import ATTRS, run_hs2, write_jsonl

pytestmark = pytest.mark.slow


def test_help_lists_every_command():
    result = run_hs2("--help")
    assert result.returncode == 0
    for command in ("train-rm", "data"):
        assert command in result.stdout


def test_dry_run_prints_the_launch_command(helpsteer_file):
    result = run_hs2("train-rm", "--dataset", helpsteer_file, "--num-processes", "2", "--dry-run", "--max_steps", "3")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert "hs2trl.runtime.accelerate_launch" in line and "--num_processes 2" in line
    assert "hs2trl.stages.train_rm" in line and "--max_steps 3" in line and "recipes/demo/rm.yaml" in line


def test_train_rm_on_local_model_and_file(tmp_path, tiny_lm_dir, helpsteer_file):
    out = tmp_path / "rm"
    result = run_hs2(
        "train-rm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_fraction", "0.25",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 1 process(es)" in result.stdout
    assert "Pearson r" in result.stdout  # the closing table
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 5 and [model.config.id2label[i] for i in range(5)] == ATTRS
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {f"eval_mse_{a}" for a in ATTRS} <= set(metrics)


def test_two_rank_cpu_run(tmp_path, tiny_lm_dir, helpsteer_file):
    out = tmp_path / "rm2"
    result = run_hs2(
        "train-rm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--num-processes", "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout  # world size 2: a real gloo run
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 5


def test_preference_data_trains_a_bradley_terry_model(tmp_path, tiny_lm_dir):
    rows = [{"chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "good answer"}],
             "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}]}
            for i in range(8)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "bt"
    result = run_hs2("train-rm", "--model", tiny_lm_dir, "--dataset", data, "--output-dir", str(out),
                     "--max_steps", "2", "--per_device_train_batch_size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Bradley-Terry" in result.stdout
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    assert torch.isfinite(model.score.weight).all()
