"""Helpers the tests share: the repository paths, hand-made HelpSteer2 rows, a tiny Llama config with the real
tokenizer, and the real `hs2` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


SHARED_DATA = REPO.parent / "shared" / "data"


ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]



def tiny_llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)



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



def run_hs2(*args: str, timeout: int = 600, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `hs2` CLI in a subprocess (as a user would), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "hs2trl.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ},
    )
