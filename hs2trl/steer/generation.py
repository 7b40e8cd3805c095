"""Sampling responses from a policy: batched `generate` (or vLLM when installed and a GPU is present), resumable.

Used by iterative DPO (n samples per prompt, scored by the RM) and by SteerLM 2.0 (n samples under the target
attributes). Results go to a .jsonl file one prompt per line, appended as they are made: a rerun skips prompts
already there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from hs2trl.data.chat import encode_prompt, end_of_turn_id

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.7, 0.9  # the paper's sampling for iterative DPO and SteerLM 2.0


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return torch.cuda.is_available()
    except ImportError:
        return False


def _left_padded(batch: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch):  # left padding for generation
        input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


@torch.inference_mode()
def generate_batches(model, tokenizer, encoded: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8,
                     sampling: dict | None = None, progress: str | None = None) -> Iterator[list[tuple[int, str]]]:
    """Generate one response per encoded prompt, in length-sorted batches (similar lengths: little left padding);
    yields each batch's `(index, text)` as soon as it is done, so callers can save as they go. `sampling` holds
    `temperature`/`top_p` (None: greedy). Stops at the chat template's end-of-turn token as well as eos."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    # A full config of our own: the model's saved one may carry sampling flags that greedy decoding would warn about.
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                              pad_token_id=tokenizer.pad_token_id, do_sample=sampling is not None,
                              **(sampling or {}))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        batch = order[start : start + batch_size]
        input_ids, attention_mask = _left_padded([encoded[i] for i in batch], tokenizer.pad_token_id)
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   generation_config=config)
        width = input_ids.shape[1]
        yield [(i, tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip())
               for row, i in enumerate(batch)]


def sample_hf(model, tokenizer, prompts: Sequence[Sequence[dict]], num_samples: int,
              temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, max_new_tokens: int = 256,
              batch_size: int = 8) -> list[list[str]]:
    """`num_samples` responses per prompt (chat messages ending on a user turn, system message included if any)."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    jobs = [i for i in range(len(prompts)) for _ in range(num_samples)]
    out: list[list[str]] = [[] for _ in prompts]
    for batch in generate_batches(model, tokenizer, [encoded[i] for i in jobs], max_new_tokens, batch_size,
                                  sampling={"temperature": temperature, "top_p": top_p}):
        for job, text in sorted(batch):
            out[jobs[job]].append(text)
    return out


def vllm_engine(model_path: str, seed: int = 0, **kwargs):
    """One vLLM engine over every visible GPU (tensor parallel), to reuse across `sample_vllm` calls."""
    from vllm import LLM

    kwargs.setdefault("tensor_parallel_size", max(1, torch.cuda.device_count()))
    return LLM(model=model_path, tokenizer=model_path, seed=seed, **kwargs)


def sample_vllm(model_path: str, tokenizer, prompts: Sequence[Sequence[dict]], num_samples: int,
                temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                max_new_tokens: int = 256, llm=None) -> list[list[str]]:
    """As `sample_hf`, with vLLM (temperature 0: greedy). Pass `llm` (from `vllm_engine`) to reuse an engine.

    Stops at the chat template's end-of-turn token as well as eos: a base model's generation config often names only
    eos (Llama 3: <|end_of_text|>, not <|eot_id|>), and vLLM would otherwise run on past the end of the turn."""
    from vllm import SamplingParams

    llm = llm if llm is not None else vllm_engine(model_path)
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                            stop_token_ids=stop_ids)
    requests = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
    return [[c.text.strip() for c in result.outputs] for result in llm.generate(requests, params, use_tqdm=False)]
