"""Batch scoring with a reward model: sequences sorted by length so that batches carry little padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data.chat import encode_conversation


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_token_ids(model, pad_token_id: int, sequences: Sequence[Sequence[int]], batch_size: int = 16,
                    progress: bool = False, desc: str = "Scoring") -> torch.Tensor:
    """`[N, k]` head outputs at the last token of each sequence, in input order (float32, on CPU)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out = torch.empty(len(sequences), model.config.num_labels)
    batches = length_sorted_batches([len(s) for s in sequences], batch_size)
    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        width = max(len(sequences[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(sequences[i])] = torch.as_tensor(sequences[i])
            attention_mask[row, : len(sequences[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        out[batch] = logits.float().cpu()
    return out


def score_conversations(model, tokenizer, conversations: Sequence[Sequence[dict]], batch_size: int = 16,
                        progress: bool = False) -> torch.Tensor:
    """`[N, k]` attribute predictions for full conversations (each ending on an assistant turn)."""
    sequences = [encode_conversation(tokenizer, c) for c in conversations]
    return score_token_ids(model, tokenizer.pad_token_id, sequences, batch_size, progress)
