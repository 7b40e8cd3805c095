"""SteerLM 2.0 response groups: one prompt with its n responses, tokenised, validated and collated.

Batches are padding-free by default (`padding_free`, `collate_groups`): one packed row per batch, and with
`shared_prompt` each prompt appears once in it, followed by its n responses, which all attend to it; the LM head
runs only on the positions that predict a response token. The log-probs equal the padded layout's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from hs2trl.packing import pack_sequences, pack_shared_prefix
from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.errors import Hs2Error
from hs2trl.trl_internals import pad

LAYOUTS = ("padded", "packed", "shared_prompt")  # see `collate_groups`


SHARED_PROMPT_DEFAULT = True  # measured in `make bench` (docs/performance.md)



def tokenize_group(tokenizer, prompt, attributes, responses, attribute_names=ATTRIBUTES, conditioned: bool = True):
    """Token ids of one prompt and its n responses: `(prompt_ids, [response_ids...])`.

    The prompt is conditioned on `attributes` (unless `conditioned=False`: the plain prompt, for log P(y|x)).
    Each response's ids are the tokens after the assistant header up to and including the end-of-turn token (the
    response `y` includes `<|im_end|>`: stopping is part of the answer). They are taken from the *conditioned*
    rendering and reused under the plain prompt, so that log Q' and log P(y|x) score the same tokens."""
    from hs2trl.data.chat import encode_conversation, encode_prompt
    from hs2trl.steer.steering import condition

    cond = condition(prompt, attributes, attribute_names)
    cond_ids = encode_prompt(tokenizer, cond)
    out = []
    for text in responses:
        full = encode_conversation(tokenizer, cond + [{"role": "assistant", "content": text}])
        if full[: len(cond_ids)] != cond_ids:  # a template that rewrites earlier turns: tokenise the tail alone
            rendered_prompt = tokenizer.decode(cond_ids)
            rendered = tokenizer.decode(full)
            full = cond_ids + tokenizer(rendered[len(rendered_prompt):], add_special_tokens=False)["input_ids"]
        out.append(full[len(cond_ids):])
    prompt_ids = cond_ids if conditioned else encode_prompt(tokenizer, prompt)
    return prompt_ids, out



def collate_groups(groups, layout: str = "padded", pad_token_id: int | None = None,
                   pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """The sequences `prompt + response_i` of `groups` (`[(prompt_ids, [response_ids...])]`), in group order, as one
    batch for `batch_response_logps`, in one of three layouts:

    - `padded`: `input_ids`/`attention_mask`/`response_mask` `[S, T]`, right padding (needs `pad_token_id`);
    - `packed`: one row `[1, sum(len)]` holding every sequence (`hs2trl.packing.pack_sequences`);
    - `shared_prompt`: one row holding each prompt once, then its responses, which attend to it
      (`hs2trl.packing.pack_shared_prefix`).

    Packed layouts add `logits_index` (the row positions that predict a response token: the prompt's last position
    for the first token, then the response's own), `target_ids` (the tokens they predict) and `target_sequence` (which
    sequence each belongs to). Every layout has `response_lengths` `[S]` and `sequence_tokens` (the tokens of the
    S sequences, each prompt counted once per response: the work the padded layout does without its padding)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    groups = [([int(t) for t in prompt], [[int(t) for t in r] for r in responses]) for prompt, responses in groups]
    lengths = [len(r) for _, responses in groups for r in responses]
    out: dict = {"response_lengths": torch.tensor(lengths, dtype=torch.float),
                 "sequence_tokens": torch.tensor(sum(len(p) * len(rs) for p, rs in groups) + sum(lengths))}
    if layout == "padded":
        ids, masks = [], []
        for prompt, responses in groups:
            for response in responses:
                ids.append(torch.tensor(prompt + response, dtype=torch.long))
                masks.append(torch.tensor([0] * len(prompt) + [1] * len(response)))
        kwargs = {"padding_side": "right", "pad_to_multiple_of": pad_to_multiple_of}
        return {"input_ids": pad(ids, pad_token_id, **kwargs),
                "attention_mask": pad([torch.ones_like(x) for x in ids], 0, **kwargs),
                "response_mask": pad(masks, 0, **kwargs), **out}

    index, targets, owner = [], [], []
    offset = sequence = 0  # where the next token goes in the packed row; which sequence it belongs to
    for prompt, responses in groups:
        if layout == "shared_prompt":  # the prompt once; its last position predicts every response's first token
            prompt_end, offset = offset + len(prompt) - 1, offset + len(prompt)
        for response in responses:
            if layout == "packed":  # the prompt again before each response
                prompt_end, offset = offset + len(prompt) - 1, offset + len(prompt)
            index += [prompt_end, *range(offset, offset + len(response) - 1)]
            targets += response
            owner += [sequence] * len(response)
            offset += len(response)
            sequence += 1
    tensors = [(torch.tensor(p, dtype=torch.long), [torch.tensor(r, dtype=torch.long) for r in rs])
               for p, rs in groups]
    if layout == "shared_prompt":
        packed = pack_shared_prefix(tensors)
    else:
        packed = pack_sequences([torch.cat([p, r]) for p, rs in tensors for r in rs])
        del packed["end_index"]
    return {**packed, "logits_index": torch.tensor(index), "target_ids": torch.tensor(targets),
            "target_sequence": torch.tensor(owner), **out}


@dataclass
class DataCollatorForSteerLM2(DataCollatorMixin):
    """Groups of `{prompt_ids, response_ids: n lists, log_weights: n, steerlm_logps: n}` -> one batch in `layout`
    (`collate_groups`; prompt i's responses are sequences `i*n .. i*n+n-1`), plus `log_weights`/`steerlm_logps`
    `[B, n]` and `response_lengths` `[B, n]`."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    layout: str = "padded"
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sizes = {len(e["response_ids"]) for e in examples}
        if len(sizes) != 1:
            raise ValueError(f"every prompt in a batch needs the same number of responses, got {sorted(sizes)}")
        batch = collate_groups([(e["prompt_ids"], e["response_ids"]) for e in examples], self.layout,
                               self.pad_token_id, self.pad_to_multiple_of)
        batch["response_lengths"] = batch["response_lengths"].view(len(examples), sizes.pop())
        # log_weights first: Trainer's find_batch_size reads the first tensor (B prompts; a packed row has 1)
        return {"log_weights": torch.tensor([e["log_weights"] for e in examples], dtype=torch.float),
                "steerlm_logps": torch.tensor([e["steerlm_logps"] for e in examples], dtype=torch.float), **batch}



def _float_list(row: dict, key: str, n: int, where: str) -> list[float]:
    values = row.get(key)
    if not isinstance(values, list) or len(values) != n:
        raise Hs2Error(f"{where}: field '{key}': expected {n} numbers (one per response)")
    if any(v is None or not math.isfinite(float(v)) for v in values):
        raise Hs2Error(f"{where}: field '{key}': every value must be a finite number")
    return [float(v) for v in values]



def validate_group(row: dict, where: str) -> int:
    """Check one sampled row; returns its number of responses."""
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise Hs2Error(f"{where}: field 'responses': expected a list of at least 2 strings")
    for key in ("steerlm_logps", "sft_logps", "attribute_logps"):
        _float_list(row, key, len(responses), where)
    if not isinstance(row.get("prompt"), list) or not row["prompt"]:
        raise Hs2Error(f"{where}: field 'prompt': expected chat messages")
    return len(responses)



def row_attributes(row: dict, attribute_names) -> dict[str, int]:
    from hs2trl.steer.steering import attribute_values

    value = row.get("attributes")
    if value is None:
        raise Hs2Error("field 'attributes': missing target attribute levels")
    return attribute_values(value, attribute_names)
