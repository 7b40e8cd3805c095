"""Sampling responses from a policy: batched `generate` (or vLLM when installed and a GPU is present), resumable.

Used by iterative DPO (n samples per prompt, scored by the RM) and by SteerLM 2.0 (n samples under the target
attributes). Results go to a .jsonl file one prompt per line, appended as they are made: a rerun skips prompts
already there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data.chat import encode_prompt, end_of_turn_id

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.7, 0.9  # the paper's sampling for iterative DPO and SteerLM 2.0


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return torch.cuda.is_available()
    except ImportError:
        return False


@torch.inference_mode()
def sample_hf(model, tokenizer, prompts: Sequence[Sequence[dict]], num_samples: int,
              temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, max_new_tokens: int = 256,
              batch_size: int = 8) -> list[list[str]]:
    """`num_samples` responses per prompt (chat messages ending on a user turn, system message included if any)."""
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id})
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(num_samples)]
    jobs.sort(key=lambda job: len(job[1]))  # similar lengths together: less left padding
    device = next(model.parameters()).device
    out: list[list[str]] = [[] for _ in prompts]
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (_, ids) in enumerate(batch):  # left padding for generation
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=True,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, (i, _) in enumerate(batch):
            text = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
            out[i].append(text)
    return out


def vllm_engine(model_path: str, seed: int = 0, **kwargs):
    """One vLLM engine over every visible GPU (tensor parallel), to reuse across `sample_vllm` calls."""
    from vllm import LLM

    kwargs.setdefault("tensor_parallel_size", max(1, torch.cuda.device_count()))
    return LLM(model=model_path, tokenizer=model_path, seed=seed, **kwargs)


def sample_vllm(model_path: str, tokenizer, prompts: Sequence[Sequence[dict]], num_samples: int,
                temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                max_new_tokens: int = 256, llm=None) -> list[list[str]]:
    """As `sample_hf`, with vLLM. Pass `llm` (from `vllm_engine`) to reuse an engine across calls.

    Stops at the chat template's end-of-turn token as well as eos: a base model's generation config often names only
    eos (Llama 3: <|end_of_text|>, not <|eot_id|>), and vLLM would otherwise run on past the end of the turn."""
    from vllm import SamplingParams

    llm = llm if llm is not None else vllm_engine(model_path)
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                            stop_token_ids=stop_ids)
    requests = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
    return [[c.text.strip() for c in result.outputs] for result in llm.generate(requests, params, use_tqdm=False)]
