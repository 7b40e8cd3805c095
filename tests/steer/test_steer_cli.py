"""`hs2 steerlm`, `hs2 steerlm2` and `hs2 generate` end to end on tiny models (the real CLI in subprocesses), and the
SteerLM recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO, run_hs2

FAST = ["--max_steps", "2", "--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"]


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO / "recipes"))
                                          for p in (REPO / "recipes").rglob("steerlm*.yaml")))
def test_steer_recipes_parse(recipe):
    import importlib

    stage = importlib.import_module(f"hs2trl.stages.{Path(recipe).stem}")
    data_args, training_args, model_args = stage.parse(["--config", str(REPO / "recipes" / recipe), "--bf16", "false"])
    assert model_args.model_name_or_path and data_args.reward_model
    if Path(recipe).stem == "steerlm2":
        assert data_args.sft_model and data_args.iterations >= 1
        if recipe.startswith("llama3-70b"):  # the paper's SteerLM 2.0 settings
            assert (data_args.num_samples, data_args.max_prompts, data_args.iterations) == (10, 20000, 2)
            assert (training_args.learning_rate, training_args.num_train_epochs) == (1e-7, 2)
            assert (data_args.temperature, data_args.top_p) == (0.7, 0.9)


@pytest.mark.slow
def test_steerlm_then_steerlm2_then_generate(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file):
    steerlm_dir, steerlm2_dir = tmp_path / "steerlm", tmp_path / "steerlm2"

    # SteerLM: annotate with the RM, then conditioned SFT.
    result = run_hs2("steerlm", "--model", tiny_lm_dir, "--reward-model", tiny_rm_dir, "--dataset", helpsteer_file,
                     "--output-dir", str(steerlm_dir), "--per_device_train_batch_size", "4", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    annotated = [json.loads(line) for line in (steerlm_dir / "annotated.jsonl").read_text().splitlines()]
    assert len(annotated) == 16 and all(isinstance(r["label_verbosity"], int) for r in annotated)
    assert (steerlm_dir / "model.safetensors").exists() and "SteerLM model saved" in result.stdout

    # SteerLM 2.0, one iteration; sampling in a child process (the path ZeRO-3 runs take).
    common = ["--model", str(steerlm_dir), "--sft-model", tiny_lm_dir, "--reward-model", tiny_rm_dir,
              "--dataset", helpsteer_file, "--output-dir", str(steerlm2_dir), "--num_samples", "2",
              "--max_new_tokens", "6", "--max_prompts", "3", "--per_device_train_batch_size", "3", *FAST]
    result = run_hs2("steerlm2", "--iterations", "1", "--sampling_processes", "single", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    it0 = steerlm2_dir / "iteration-0"
    rows = [json.loads(line) for line in (it0 / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 2 for r in rows)
    assert (it0 / "DONE").exists() and (it0 / "model" / "model.safetensors").exists()
    assert "sampling in one child process" in result.stdout
    assert "'kl'" in result.stdout + result.stderr

    # A rerun with more iterations skips iteration 0 and samples iteration 1 from iteration 0's model.
    result = run_hs2("steerlm2", "--iterations", "2", "--phase", "sample", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "iteration 0: done" in result.stdout
    assert f"iteration 1: policy {it0 / 'model'}" in result.stdout
    assert (steerlm2_dir / "iteration-1" / "samples.jsonl").exists()
    assert not (steerlm2_dir / "iteration-1" / "DONE").exists()

    # Sampling from the result under chosen attributes.
    model = str(it0 / "model")
    result = run_hs2("generate", "--model", model, "--prompt", "Hello", "--attributes", "verbosity:0",
                     "--max-new-tokens", "4", "--num-samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:0" in result.stdout
    out = tmp_path / "generated.jsonl"
    result = run_hs2("generate", "--model", model, "--dataset", helpsteer_file, "--output", str(out),
                     "--max-prompts", "2", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    generated = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(generated) == 2 and generated[0]["attributes"]["complexity"] == 2


def _cli(*args):
    """The hs2 app in this process (fast): exit status and stderr."""
    from typer.testing import CliRunner

    from hs2trl.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr


def test_steer_commands_fail_in_one_line(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file):
    code, err = _cli("steerlm2", "--model", tiny_lm_dir, "--reward-model", tiny_lm_dir, "--sft-model", tiny_lm_dir,
                     "--dataset", helpsteer_file, "--output-dir", str(tmp_path / "o"))
    assert code == 2 and "not a reward model" in err and err.strip().count("\n") == 0
    code, err = _cli("steerlm2", "--model", tiny_lm_dir, "--reward-model", tiny_rm_dir, "--sft-model", tiny_lm_dir,
                     "--dataset", helpsteer_file, "--target_attributes", "helpfulness:4,verbosity:7")
    assert code == 2 and "outside 0-4" in err and err.strip().count("\n") == 0
    code, err = _cli("steerlm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--reward_model", "")
    assert code == 2 and "--reward-model" in err and "--reward-url" in err
    code, err = _cli("generate", "--model", tiny_lm_dir, "--prompt", "Hi", "--attributes", "helpfulness:9")
    assert code == 2 and "outside 0-4" in err and err.strip().count("\n") == 0
    code, err = _cli("generate", "--model", tiny_lm_dir)
    assert code == 2 and "--prompt" in err
