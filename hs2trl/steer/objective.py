"""The SteerLM 2.0 objective (HelpSteer2 paper §4.5): the loss, the attribute likelihood, response log-probs.

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
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from hs2trl.packing import base_model, is_packed, model_inputs
from hs2trl.trl_internals import selective_log_softmax

NUM_LEVELS = 5  # levels 0..4


LOG_SOFTMAX_CHUNK = 1024  # response positions per log-softmax call in packed batches


PROBABILITY_FLOOR = 1e-12  # keeps log P(a|x,y) finite for a level the Beta model gives (numerically) no mass



def normalised_weights(policy_logps: torch.Tensor, steerlm_logps: torch.Tensor, log_weights: torch.Tensor):
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
    w, b = normalised_weights(policy_logps, steerlm_logps, log_weights)
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



def attribute_log_likelihood(predicted: torch.Tensor, target: torch.Tensor,
                             concentration: float = 24.0) -> torch.Tensor:
    """`log P(a|x,y)`: the sum over the k attributes of `log P(level = target)` under the Beta model.

    Args:
        predicted: `[..., k]` reward-model outputs on the 0-4 scale.
        target: `[..., k]` integer levels 0..4.
        concentration: `α + β` of each Beta distribution (24 in the paper).

    Returns: `[...]` float32 tensor on `predicted`'s device; each level probability is floored at 1e-12.
    """
    target = torch.as_tensor(target, device=predicted.device)
    if target.shape != predicted.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must have "
                         "the same shape")
    target_cpu = target.detach().cpu()
    if target_cpu.is_floating_point() and not torch.equal(target_cpu, target_cpu.round()):
        raise ValueError("target levels must be integers 0..4")
    levels = target_cpu.long()
    if levels.numel() and (levels.min() < 0 or levels.max() >= NUM_LEVELS):
        raise ValueError(f"target levels must be in 0..{NUM_LEVELS - 1}, got "
                         f"{levels.min().item()}..{levels.max().item()}")
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
