"""SteerLM 2.0 (HelpSteer2 paper §4.5): the loss, the attribute likelihood, and `SteerLM2Trainer`, a TRL trainer.

SteerLM 2.0 trains `Q_θ(y|a,x)` (initialised from the SteerLM model `Q'`) towards `P(y|a,x) ∝ P(a|x,y) P(y|x)` from
`n` responses per prompt sampled from `Q'(·|a,x)`:

- `log w_i = log P(a|x,y_i) + log P(y_i|x) - log Q'(y_i|a,x)`, `w' = softmax(log w)` over the prompt's n responses;
- `log b_i = log Q_θ(y_i|a,x) - log Q'(y_i|a,x)`, `b' = softmax(log b)` with the current θ and no gradient;
- loss of one prompt `-Σ_i stopgrad(w'_i - b'_i) · log Q_θ(y_i|a,x)`, averaged over prompts;
- monitor `KL(w' || b') = Σ_i w'_i log(w'_i / b'_i)`.

`log P(a|x,y)` comes from the regression reward model through a Beta model per attribute
(`attribute_log_likelihood`); the attributes are treated as independent (sum of logs) — the paper does not say how
they combine. The level bins are `[(n - 0.5)/4, (n + 0.5)/4]` clipped to [0, 1] (levels 0 and 4 get half-width bins at
the ends), the contract of this module; DESIGN.md's "five equal bins of [0, 1]" would be `[n/5, (n+1)/5]`.

`SteerLM2Trainer` takes the dataset written by `hs2 steerlm2`'s sampling stage: one row per prompt with
`prompt` (chat messages), `attributes` (target levels), `responses` (n strings) and the three precomputed
`steerlm_logps`, `sft_logps`, `attribute_logps` (each n floats). A training batch holds whole prompts:
`per_device_train_batch_size` counts prompts, each bringing its n sequences.

Batches are padding-free by default (`padding_free`, `collate_groups`): one packed row per batch, and with
`shared_prompt` each prompt appears once in it, followed by its n responses, which all attend to it; the LM head
runs only on the positions that predict a response token. The log-probs equal the padded layout's.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from transformers.data.data_collator import DataCollatorMixin

from ..attributes import ATTRIBUTES
from ..errors import Hs2Error
from ..packing import (
    attention_implementation,
    base_model,
    is_packed,
    model_inputs,
    pack_sequences,
    pack_shared_prefix,
    prepare_for_packing,
)
from .trl_internals import BaseConfig, BaseTrainer, disable_dropout_in_model, pad, selective_log_softmax

NUM_LEVELS = 5  # levels 0..4
LAYOUTS = ("padded", "packed", "shared_prompt")  # see `collate_groups`
SHARED_PROMPT_DEFAULT = True  # measured in `make bench` (docs/performance.md)
LOG_SOFTMAX_CHUNK = 1024  # response positions per log-softmax call in packed batches
PROBABILITY_FLOOR = 1e-12  # keeps log P(a|x,y) finite for a level the Beta model gives (numerically) no mass


# ----------------------------------------------------------------------------------------------- the mathematics


def _normalised_weights(policy_logps: torch.Tensor, steerlm_logps: torch.Tensor, log_weights: torch.Tensor):
    """(w', b') over the last dim; b' is detached."""
    dtype = torch.promote_types(policy_logps.dtype, torch.float32)  # at least fp32, float64 stays float64
    w = torch.softmax(log_weights.to(dtype), dim=-1)
    b = torch.softmax((policy_logps.detach() - steerlm_logps).to(dtype), dim=-1)
    return w, b


def steerlm2_loss(policy_logps: torch.Tensor, steerlm_logps: torch.Tensor, log_weights: torch.Tensor,
                  length_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SteerLM 2.0 loss and KL monitor from `[num_prompts, n]` summed response log-probs.

    Args:
        policy_logps: `log Q_θ(y_i|a,x)` (with gradient).
        steerlm_logps: `log Q'(y_i|a,x)` under the model the responses were sampled from.
        log_weights: `log P(a|x,y_i) + log P(y_i|x) - log Q'(y_i|a,x)`.
        length_scale: optional `[num_prompts]` divisor of each prompt's loss (NeMo-Aligner divides by the group's
            mean response length); None gives the plain formula.

    Returns:
        `loss = mean over prompts of -Σ_i (w'_i - b'_i) · policy_logps_i` with `w' = softmax(log_weights)`,
        `b' = softmax(policy_logps - steerlm_logps)` (no gradient through either), and
        `kl = mean over prompts of Σ_i w'_i (log w'_i - log b'_i)` (no gradient).
    """
    if not policy_logps.shape == steerlm_logps.shape == log_weights.shape or policy_logps.ndim != 2:
        raise ValueError(
            f"expected three [num_prompts, n] tensors, got {tuple(policy_logps.shape)}, "
            f"{tuple(steerlm_logps.shape)}, {tuple(log_weights.shape)}"
        )
    w, b = _normalised_weights(policy_logps, steerlm_logps, log_weights)
    coefficient = (w - b).to(policy_logps.dtype)
    per_prompt = -(coefficient * policy_logps).sum(-1)
    if length_scale is not None:
        per_prompt = per_prompt / length_scale.to(per_prompt.dtype)
    loss = per_prompt.mean()
    with torch.no_grad():
        log_w = torch.log_softmax(log_weights.to(w.dtype), dim=-1)
        log_b = torch.log_softmax((policy_logps.detach() - steerlm_logps).to(w.dtype), dim=-1)
        kl = (w * (log_w - log_b)).sum(-1).mean()
    return loss, kl


def level_probabilities(predicted: torch.Tensor, concentration: float = 24.0) -> torch.Tensor:
    """`[..., k]` predictions on the 0-4 scale -> `[..., k, 5]` Beta-model probabilities of levels 0..4 (float64).

    Per attribute `r01 = clamp(predicted / 4, 1e-3, 1 - 1e-3)`, `Beta(α = c·r01, β = c - α)`, and
    `P(level n) = CDF((n + 0.5)/4) - CDF((n - 0.5)/4)` with the bounds clipped to [0, 1]; the five sum to 1.
    No gradient (computed with scipy's regularised incomplete beta function; torch has no Beta CDF)."""
    from scipy.special import betainc

    r01 = np.clip(predicted.detach().double().cpu().numpy() / 4.0, 1e-3, 1 - 1e-3)
    alpha = concentration * r01
    beta = concentration - alpha
    levels = np.arange(NUM_LEVELS, dtype=np.float64)
    upper = np.clip((levels + 0.5) / 4.0, 0.0, 1.0)
    lower = np.clip((levels - 0.5) / 4.0, 0.0, 1.0)
    a, b = alpha[..., None], beta[..., None]
    probs = betainc(a, b, upper) - betainc(a, b, lower)
    return torch.from_numpy(np.clip(probs, 0.0, None))


def attribute_log_likelihood(predicted: torch.Tensor, target: torch.Tensor, concentration: float = 24.0) -> torch.Tensor:
    """`log P(a|x,y)`: the sum over the k attributes of `log P(level = target)` under the Beta model.

    Args:
        predicted: `[..., k]` reward-model outputs on the 0-4 scale.
        target: `[..., k]` integer levels 0..4.
        concentration: `α + β` of each Beta distribution (24 in the paper).

    Returns: `[...]` float32 tensor on `predicted`'s device; each level probability is floored at 1e-12.
    """
    target = torch.as_tensor(target, device=predicted.device)
    if target.shape != predicted.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must have the same shape")
    target_cpu = target.detach().cpu()
    if target_cpu.is_floating_point() and not torch.equal(target_cpu, target_cpu.round()):
        raise ValueError("target levels must be integers 0..4")
    levels = target_cpu.long()
    if levels.numel() and (levels.min() < 0 or levels.max() >= NUM_LEVELS):
        raise ValueError(f"target levels must be in 0..{NUM_LEVELS - 1}, got {levels.min().item()}..{levels.max().item()}")
    probs = level_probabilities(predicted, concentration)
    chosen = probs.gather(-1, levels[..., None]).squeeze(-1).clamp(min=PROBABILITY_FLOOR)
    return chosen.log().sum(-1).float().to(predicted.device)


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
                   ) -> torch.Tensor:
    """`[B]` summed log-probs of the tokens where `response_mask` is 1 (each predicted from the tokens before it), for
    a right-padded batch (the `padded` layout).

    Only the positions from the earliest response token on go through the LM head (`logits_to_keep`): logits over
    the whole prompt would be `[B, L, V]`, over 10 GB for 10 Llama 3 responses of 4k tokens."""
    length = input_ids.shape[1]
    predicts_response = response_mask[:, 1:].bool().any(0).nonzero()  # position t predicts token t + 1
    start = int(predicts_response[0]) if len(predicts_response) else length - 1
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=length - start).logits
    except TypeError:  # a model without `logits_to_keep`
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, -(length - start):-1]  # positions start .. L-2 (also when the model returned all L)
    per_token = selective_log_softmax(logits, input_ids[:, start + 1:]).float()
    return (per_token * response_mask[:, start + 1:].float()).sum(-1)


@contextlib.contextmanager
def _lm_head_reads(model, positions: torch.Tensor):
    """Within the block the LM head sees only the hidden states at `positions` of the (single) packed row (yields
    False for a model without a separate output layer).

    A pre-hook on the output embedding rather than `logits_to_keep`: it runs after PEFT/DDP/ZeRO wrappers and on the
    head's own device when a model is spread over GPUs, and works for models without `logits_to_keep`."""
    head = base_model(model).get_output_embeddings()
    if head is None:  # no separate output layer to hook: the caller selects from the full logits
        yield False
        return

    def select(_module, args):
        hidden = args[0]
        return (hidden[:, positions.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield True
    finally:
        handle.remove()


def packed_response_logps(model, batch: dict) -> torch.Tensor:
    """`[S]` summed response log-probs of a packed or shared-prompt batch (`collate_groups`).

    The LM head and the log-softmax run only on `logits_index`, the positions that predict a response token (one per
    response token, the prompt's last position once per response): no `[tokens, vocab]` logits for prompts."""
    with _lm_head_reads(model, batch["logits_index"]) as selected:
        logits = model(**model_inputs(batch), use_cache=False).logits[0]  # [M, V]
    if not selected:
        logits = logits[batch["logits_index"].to(logits.device)]
    targets = batch["target_ids"].to(logits.device)
    # in row chunks: one [chunk, V] temporary at a time, and few kernel launches
    per_token = torch.cat([selective_log_softmax(rows[None], ids[None])[0].float()
                           for rows, ids in zip(logits.split(LOG_SOFTMAX_CHUNK), targets.split(LOG_SOFTMAX_CHUNK))])
    sums = per_token.new_zeros(batch["response_lengths"].numel())
    return sums.index_add(0, batch["target_sequence"].to(per_token.device), per_token)


def batch_response_logps(model, batch: dict) -> torch.Tensor:
    """`[S]` summed response log-probs of a `collate_groups` batch in any layout (sequences in group order).

    The one function behind log Q' and log P(y|x) in the sampling stage and log Q_θ in the trainer, so that the
    numbers agree (b' is uniform at the start of an iteration)."""
    if is_packed(batch):
        return packed_response_logps(model, batch)
    return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])


# ------------------------------------------------------------------------------------------------ config, data


@dataclass
class SteerLM2Config(BaseConfig):
    """`TrainingArguments` for `SteerLM2Trainer`. Batch sizes count prompts (each with its n responses).

    Defaults follow the paper's SteerLM 2.0 run: constant LR 1e-7, 2 epochs (global batch 128 prompts is set in the
    recipe through per-device batch size x processes x gradient accumulation)."""

    learning_rate: float = field(default=1e-7, metadata={"help": "AdamW learning rate (paper: 1e-7, constant)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the sampled prompts (paper: 2)."})
    # None, not TRL's True: transformers 5 warns about the deprecated name whenever it is set; use
    # `activation_checkpointing: true` to recompute activations in the backward pass.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (transformers 5)."}
    )
    attributes: list[str] = field(
        default_factory=lambda: list(ATTRIBUTES),
        metadata={"help": "Attribute names of the conditioning string, in order."},
    )
    max_length: int | None = field(
        default=4096,
        metadata={
            "help": "Prompts whose longest prompt+response sequence is longer are dropped (counted and reported; "
            "truncating would change the log-probs the weights were computed with). None: no limit."
        },
    )
    length_normalization: bool = field(
        default=False,
        metadata={
            "help": "Divide each prompt's loss by the mean response length (tokens) of its n responses, as "
            "NeMo-Aligner does. Off: the plain formula -Σ_i (w'_i - b'_i) log Q_θ(y_i|a,x)."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off so that b' is computed with the same policy as log Q'."}
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Pack a batch's sequences into one row with position_ids and varlen boundaries (no padding; the "
            "LM head runs only where a response token is predicted). sdpa/eager models switch to hs2trl's packed "
            "attention; other attention implementations fall back to padded batches. Same log-probs and loss."
        },
    )
    shared_prompt: bool = field(
        default=SHARED_PROMPT_DEFAULT,
        metadata={
            "help": "With padding_free: put each prompt once in the packed row, followed by its n responses, which "
            "all attend to it (the prompt goes through the model once instead of n times). Same log-probs."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments of `AutoModelForCausalLM.from_pretrained` (model given as a path)."}
    )
    chat_template_path: str | None = field(
        default=None, metadata={"help": "A .jinja chat template or a tokenizer id whose template to use."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenising the dataset."})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad sequence lengths to a multiple of this."})

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise Hs2Error(f"attributes: expected distinct names, got {self.attributes}")
        if isinstance(self.model_init_kwargs, str):
            import json

            self.model_init_kwargs = json.loads(self.model_init_kwargs)


def tokenize_group(tokenizer, prompt, attributes, responses, attribute_names=ATTRIBUTES, conditioned: bool = True):
    """Token ids of one prompt and its n responses: `(prompt_ids, [response_ids...])`.

    The prompt is conditioned on `attributes` (unless `conditioned=False`: the plain prompt, for log P(y|x)).
    Each response's ids are the tokens after the assistant header up to and including the end-of-turn token (the
    response `y` includes `<|im_end|>`: stopping is part of the answer). They are taken from the *conditioned*
    rendering and reused under the plain prompt, so that log Q' and log P(y|x) score the same tokens."""
    from ..data.chat import encode_conversation, encode_prompt
    from ..steering import condition

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
    tensors = [(torch.tensor(p, dtype=torch.long), [torch.tensor(r, dtype=torch.long) for r in rs]) for p, rs in groups]
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


# ---------------------------------------------------------------------------------------------------- the trainer


class SteerLM2Trainer(BaseTrainer):
    """SteerLM 2.0 policy training on pre-sampled responses (see the module doc for the data and the loss).

    `model`: a causal LM or its path (the SteerLM model, or the previous iteration's policy). Nothing else is loaded:
    `log Q'`, `log P(y|x)` and `log P(a|x,y)` come precomputed in the dataset. Logs `loss`, `kl` (the KL monitor
    `Σ_i w'_i log(w'_i / b'_i)`), `weights_entropy` (entropy of w': low means one response dominates) and
    `num_tokens`. Saves a plain causal LM.
    """

    _tag_names = ["trl", "hs2trl", "steerlm", "steerlm2"]
    _name = "SteerLM 2.0"
    _paper = {
        "title": "HelpSteer2: Open-source dataset for training top-performing reward models",
        "id": "2406.08673",
        "citation": "@article{wang2024helpsteer2,\n  title={HelpSteer2: Open-source dataset for training top-performing "
        "reward models},\n  author={Wang, Zhilin and Dong, Yi and Delalleau, Olivier and Zeng, Jiaqi and Shen, Gerald "
        "and Egert, Daniel and Zhang, Jimmy J. and Sreedhar, Makesh Narsimhan and Kuchaiev, Oleksii},\n  "
        "journal={arXiv preprint arXiv:2406.08673},\n  year={2024}\n}",
    }

    def __init__(self, model, args: SteerLM2Config | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, optimizers=(None, None),
                 peft_config=None):
        from transformers import AutoModelForCausalLM

        from ..modeling import load_tokenizer
        from ..pretrained import resolve_model

        args = args or SteerLM2Config("steerlm2-model")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if processing_class is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            processing_class = load_tokenizer(name, args.chat_template_path)
        if isinstance(model, str):
            kwargs = dict(args.model_init_kwargs or {})
            kwargs.setdefault("dtype", "float32")
            model = AutoModelForCausalLM.from_pretrained(resolve_model(model), **kwargs)
        if len(processing_class) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(processing_class))
        model.config.pad_token_id = processing_class.pad_token_id
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()
        if args.disable_dropout:
            disable_dropout_in_model(model)

        self.dropped_rows: dict[str, int] = {}
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, processing_class, args, k) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        self.layout = _training_layout(model, args)
        if data_collator is None:
            data_collator = DataCollatorForSteerLM2(processing_class.pad_token_id, args.pad_to_multiple_of,
                                                    self.layout)

        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        self.model_accepts_loss_kwargs = False  # our loss is per prompt: let Trainer scale it for accumulation
        self.can_return_loss = True
        self.label_names = []
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self.model.add_model_tags(self._tag_names)

    # -- data

    def _prepare_dataset(self, dataset, tokenizer, args, dataset_name):
        """Rows from the sampling stage -> `{prompt_ids, response_ids, log_weights, steerlm_logps}`."""
        if "prompt_ids" in dataset.column_names:
            return dataset
        sizes = set()
        for i, row in enumerate(dataset):
            sizes.add(validate_group(row, f"{dataset_name} dataset: row {i + 1}"))
        if len(sizes) > 1:
            raise Hs2Error(f"{dataset_name} dataset: prompts have different numbers of responses ({sorted(sizes)}); "
                           "a batch keeps each prompt's responses together and needs the same n everywhere")
        attribute_names = list(args.attributes)

        def tokenize(row):
            prompt_ids, response_ids = tokenize_group(tokenizer, row["prompt"], _row_attributes(row, attribute_names),
                                                      row["responses"], attribute_names)
            log_weights = [a + s - q for a, s, q in zip(row["attribute_logps"], row["sft_logps"], row["steerlm_logps"])]
            return {"prompt_ids": prompt_ids, "response_ids": response_ids, "log_weights": log_weights,
                    "steerlm_logps": [float(q) for q in row["steerlm_logps"]],
                    "length": len(prompt_ids) + max(len(r) for r in response_ids)}

        with PartialState().main_process_first():
            dataset = dataset.map(tokenize, remove_columns=dataset.column_names, num_proc=args.dataset_num_proc,
                                  desc=f"Tokenizing {dataset_name} dataset")
            if args.max_length is not None:
                too_long = sum(1 for n in dataset["length"] if n > args.max_length)
                self.dropped_rows[dataset_name] = too_long
                if too_long:
                    dataset = dataset.filter(lambda row: row["length"] <= args.max_length,
                                             desc="Dropping over-long prompts")
                    if PartialState().is_main_process:
                        print(f"hs2: {dataset_name}: {too_long} of {too_long + len(dataset)} prompts have a "
                              f"prompt+response longer than max_length={args.max_length} tokens and were dropped",
                              flush=True)
                if len(dataset) == 0:
                    raise Hs2Error(f"{dataset_name} dataset: every prompt is longer than max_length={args.max_length}")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "response_ids", "log_weights", "steerlm_logps", "length"]

    # -- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        log_weights, steerlm_logps = inputs["log_weights"], inputs["steerlm_logps"]
        num_prompts, n = log_weights.shape
        policy_logps = batch_response_logps(model, inputs).view(num_prompts, n)
        scale = inputs["response_lengths"].mean(-1).clamp(min=1.0) if self.args.length_normalization else None
        loss, kl = steerlm2_loss(policy_logps, steerlm_logps, log_weights, length_scale=scale)

        with torch.no_grad():
            w, _ = _normalised_weights(policy_logps, steerlm_logps, log_weights)
            entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(-1).mean()
            gathered = self.accelerator.gather_for_metrics(torch.stack([kl, entropy]).unsqueeze(0)).mean(0)
        self._metrics[mode]["kl"].append(gathered[0].item())
        self._metrics[mode]["weights_entropy"].append(gathered[1].item())
        if mode == "train":
            tokens = inputs["sequence_tokens"]  # prompt + response per sequence, in every layout
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"policy_logps": policy_logps.detach()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _save_checkpoint(self, model, trial):
        from pathlib import Path

        self.create_model_card(model_name=self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id
                               else Path(self.args.output_dir).name)
        super()._save_checkpoint(model, trial)


def _training_layout(model, args: SteerLM2Config) -> str:
    """`padded`, `packed` or `shared_prompt` (see `collate_groups`), from the config and the model's attention."""
    if not args.padding_free:
        return "padded"
    if prepare_for_packing(model, shared_prefix=args.shared_prompt):
        return "shared_prompt" if args.shared_prompt else "packed"
    if PartialState().is_main_process:
        print(f"hs2: padding_free: attention implementation '{attention_implementation(model)}' cannot separate "
              "packed sequences; training with padded batches", flush=True)
    return "padded"


def _row_attributes(row: dict, attribute_names) -> dict[str, int]:
    from ..steering import attribute_values

    value = row.get("attributes")
    if value is None:
        raise Hs2Error("field 'attributes': missing target attribute levels")
    return attribute_values(value, attribute_names)


__all__ = [
    "LAYOUTS",
    "DataCollatorForSteerLM2",
    "SteerLM2Config",
    "SteerLM2Trainer",
    "attribute_log_likelihood",
    "batch_response_logps",
    "collate_groups",
    "level_probabilities",
    "packed_response_logps",
    "response_logps",
    "steerlm2_loss",
    "tokenize_group",
]
