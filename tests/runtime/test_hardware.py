"""Settings that depend on the machine: bf16 on a CPU (one flag, or `bf16: auto` from a cached verdict), no pinned
memory without an accelerator, and DDP without the unused-parameter search."""

from __future__ import annotations

import json

import pytest

from tests.helpers.fixtures import REPO, run_hs2

pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only behaviour")

TRAINING_STAGES = ["train_rm", "sft", "dpo", "steerlm", "steerlm2"]


def parse(stage: str, *argv: str):
    import importlib

    module = importlib.import_module(f"hs2trl.stages.{stage}")
    recipe = REPO / "recipes" / "demo" / f"{'rm' if stage == 'train_rm' else stage}.yaml"
    parsed = module.parse(["--config", str(recipe), *argv])
    return next(p for p in parsed if hasattr(p, "ddp_find_unused_parameters"))


@pytest.fixture
def cpu_verdict(tmp_path, monkeypatch):
    """A cache folder holding a chosen verdict for this CPU (no timing in the test)."""
    import torch

    from hs2trl.runtime.cpu_bf16 import CACHE_FILE, cpu_model

    monkeypatch.setenv("HS2TRL_CACHE", str(tmp_path))

    def write(fast: bool):
        verdict = {"fast": fast, "instructions": ["avx512_bf16"], "speedup": 2.1 if fast else 1.1}
        (tmp_path / CACHE_FILE).write_text(json.dumps({f"{cpu_model()} | torch {torch.__version__}": verdict}))

    return write


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_ddp_skips_the_unused_parameter_search_and_cpu_skips_pinned_memory(stage):
    args = parse(stage, "--bf16", "false")
    assert args.ddp_find_unused_parameters is False and args.dataloader_pin_memory is False
    assert "ddp_find_unused_parameters" not in args._hs2_explicit  # a default: not written into the saved recipe
    args = parse(stage, "--bf16", "false", "--ddp_find_unused_parameters", "true", "--dataloader_pin_memory", "true")
    assert args.ddp_find_unused_parameters is True and args.dataloader_pin_memory is True  # the user's choice stands


def test_bf16_true_on_a_cpu_just_works():
    args = parse("dpo", "--bf16", "true")
    assert args.bf16 and args.use_cpu
    assert "use_cpu" not in args._hs2_explicit  # added for this machine, not written into the saved recipe
    from hs2trl.runtime.hardware import precision_note

    assert precision_note(args) == "; bf16 on the CPU (no GPU here)"
    assert precision_note(parse("dpo", "--bf16", "false")) == ""


def test_bf16_auto_follows_the_cached_verdict(cpu_verdict):
    from hs2trl.runtime.hardware import precision_note

    cpu_verdict(fast=True)
    args = parse("sft", "--bf16", "auto")
    assert args.bf16 and args.use_cpu
    assert precision_note(args) == ("; bf16: auto (this CPU's bf16 matrix products (avx512_bf16) "
                                    "run 2.1x its fp32 ones)")
    cpu_verdict(fast=False)
    args = parse("sft", "--bf16=auto")
    assert not args.bf16 and not args.use_cpu and precision_note(args) == ""
    cpu_verdict(fast=True)
    args = parse("dpo")  # `bf16: auto` in the recipe
    assert args.bf16 and args.use_cpu and "bf16" in args._hs2_explicit and "use_cpu" not in args._hs2_explicit


def test_demo_recipes_choose_bf16_automatically():
    for recipe in sorted((REPO / "recipes" / "demo").glob("*.yaml")):
        # TRL's PPOTrainer ignores bf16 (its Accelerator takes the launch's precision); eval-policy trains nothing
        if recipe.stem not in ("ppo", "eval-policy"):
            assert "\nbf16: auto" in recipe.read_text(), recipe.name


def test_cpu_verdict_is_measured_once_and_cached(tmp_path, monkeypatch):
    from hs2trl.runtime.cpu_bf16 import CACHE_FILE, cpu_bf16, native_instructions

    monkeypatch.setenv("HS2TRL_CACHE", str(tmp_path))
    verdict = cpu_bf16()
    if native_instructions():
        assert verdict.speedup > 0 and verdict.fast == (verdict.speedup >= 1.3)
    else:  # emulated bf16 is never chosen, and not even timed
        assert not verdict.fast and verdict.speedup is None
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert list(cached.values()) == [{"fast": verdict.fast, "instructions": verdict.instructions,
                                      "speedup": verdict.speedup}]
    assert cpu_bf16() == verdict


def test_bf16_without_a_cpu_fallback_is_one_line():
    from hs2trl.runtime.errors import Hs2Error

    with pytest.raises(Hs2Error, match=r"bf16 needs a GPU that has it \(Ampere or newer\) or the CPU"):
        parse("dpo", "--bf16", "true", "--use_cpu", "false")


def test_a_gpu_without_bf16_never_sends_training_to_the_cpu(monkeypatch):
    """On a GPU machine (an older card without bf16) neither `auto` nor `true` turns on use_cpu."""
    import transformers.utils

    from hs2trl.runtime import hardware
    from hs2trl.runtime.errors import Hs2Error

    monkeypatch.setattr(hardware, "has_accelerator", lambda: True)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: False)
    assert hardware.resolve_bf16(["--bf16", "auto"], {}) == (["--bf16", "false"], None)
    assert hardware.resolve_bf16(["--bf16", "true"], {}) == (["--bf16", "true"], None)
    with pytest.raises(Hs2Error, match="bf16 needs a GPU that has it"):  # transformers' refusal, in one line
        parse("dpo", "--bf16", "true")


@pytest.mark.slow
def test_train_rm_with_bf16_on_the_cpu(tmp_path, tiny_lm_dir, helpsteer_file):
    result = run_hs2("train-rm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir",
                     str(tmp_path / "rm"), "--max_steps", "1", "--per_device_train_batch_size", "2", "--bf16", "true")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "hs2: training RegressionRewardTrainer on 1 process(es); bf16 on the CPU (no GPU here)" in result.stdout
    assert "Warning" not in result.stderr and "warn" not in result.stderr.lower()
