"""Batch scoring with a reward model: length-sorted, padding-free batches under `torch.inference_mode`.

Sequences are sorted by length so that each batch holds similar lengths, and each batch is packed into one row
(`hs2trl.packing`): no matrix product is spent on padding. The head is read at each sequence's last token through
`rm.head.end_logits`, the same function the trainer uses. Models whose attention cannot separate packed sequences,
or without a `score` head, get right-padded batches instead (same reading position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hs2trl.data.chat import encode_conversation
from hs2trl.packing import pack_sequences, packed_attention, pad_sequences
from hs2trl.rm.head import end_logits, reward_head


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def truncate_left(sequences: list[list[int]], max_length: int | None) -> int:
    """Keep the last `max_length` tokens (the end-of-turn token the head reads stays); returns how many were cut."""
    if not max_length:
        return 0
    cut = 0
    for i, ids in enumerate(sequences):
        if len(ids) > max_length:
            sequences[i] = ids[-max_length:]
            cut += 1
    return cut


def input_device(model) -> torch.device:
    """Where the input ids go: the embedding's device (the first one when the model is split over GPUs)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def score_token_ids(model, pad_token_id: int, sequences: Sequence[Sequence[int]], batch_size: int = 16,
                    progress: bool = False, desc: str = "Scoring") -> torch.Tensor:
    """`[N, k]` head outputs at the last token of each sequence, in input order (float32, on CPU)."""
    from tqdm.auto import tqdm

    device = input_device(model)
    out = torch.empty(len(sequences), model.config.num_labels)
    batches = length_sorted_batches([len(s) for s in sequences], batch_size)
    head = reward_head(model, per_position=True, required=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), packed_attention(model) as packable:
            packable = packable and head is not None
            for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                ids = [torch.as_tensor(sequences[i], dtype=torch.long) for i in batch]
                inputs = pack_sequences(ids) if packable else pad_sequences(ids, pad_token_id)
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                if head is not None:
                    logits = end_logits(model, inputs, head)
                else:  # no linear `score` head: the model's own pooling (rightmost non-pad token, same position)
                    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
                out[batch] = logits.float().cpu()
    finally:
        model.train(was_training)
    return out


def score_conversations(model, tokenizer, conversations: Sequence[Sequence[dict]], batch_size: int = 16,
                        progress: bool = False) -> torch.Tensor:
    """`[N, k]` attribute predictions for full conversations (each ending on an assistant turn)."""
    sequences = [encode_conversation(tokenizer, c) for c in conversations]
    return score_token_ids(model, tokenizer.pad_token_id, sequences, batch_size, progress)
