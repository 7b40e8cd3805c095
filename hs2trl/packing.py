"""Padding-free ("packed") batches for reward models, and the one place where the head's reading position is taken.

A packed batch is one row holding several sequences back to back, with `position_ids` restarting at 0 for each and
`cu_seq_lens_*` / `max_length_*` (flash-attention's varlen arguments) marking where each starts. No token is padding,
so no matrix product is spent on padding. Attention must stay inside each sequence:

- `flash_attention_2/3/4` read `cu_seq_lens_*` themselves (true varlen kernels).
- `sdpa` and `eager` would build a `[N, N]` block-diagonal mask over the whole packed row (quadratic in the packed
  length: slower than padding). They are switched to `hs2_packed_sdpa` (registered here), which runs attention per
  sequence: on CPU one causal `scaled_dot_product_attention` per sequence (measured fastest); on CUDA with
  half-precision inputs PyTorch's own varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`) when this
  PyTorch has it, else q/k/v scattered into a `[sequences, max_len]` layout for one causal sdpa call (only the
  attention is padded; every linear layer, norm and MLP runs on the packed tokens). Unpacked inputs fall through to
  plain sdpa.

A shared-prefix row (`pack_shared_prefix`) carries a prefix once, followed by its continuations (SteerLM 2.0: a
prompt and its n responses): a continuation's positions go on from the prefix's end and it attends to the prefix and
causally to itself. Attention runs per segment (a prefix, or one continuation) over the keys that `key_index` gathers
for it (`[prefix, continuation]`, so queries and keys have different boundaries: `cu_seq_lens_q` vs `cu_seq_lens_k`,
causal aligned bottom-right, as flash-attention's varlen kernel does). Only `hs2_packed_sdpa` reads `key_index`:
shared-prefix rows always switch the model to it, also from flash_attention_2.

`end_index` marks each sequence's last token, the end-of-turn token whose hidden state the reward head reads
(`hs2trl.data.chat`); `end_logits` is the only function that turns head outputs into per-sequence predictions, for
training (padded or packed) and for scoring alike.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "hs2_packed_sdpa"
# Attention implementations that separate packed sequences given `cu_seq_lens_*` (no change needed).
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4", PACKED_ATTENTION)
# Attention implementations that `hs2_packed_sdpa` replaces for packed batches.
SWITCHABLE = ("sdpa", "eager", None)
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
SHARED_PREFIX_KWARGS = ("key_index",)  # read by hs2_packed_sdpa only


# ---------------------------------------------------------------------------------------------------------- batches
def pack_sequences(ids: Sequence[torch.Tensor]) -> dict:
    """One packed row: `input_ids`/`position_ids` `[1, sum(len)]`, varlen kwargs, `end_index` (flat positions)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    return {
        "input_ids": torch.cat(list(ids))[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "end_index": lengths.cumsum(0) - 1,
    }


def pack_shared_prefix(groups: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]]) -> dict:
    """One row `[p_1, c_11, .., c_1n, p_2, c_21, ..]`: each prefix once, then its continuations (see the module doc).

    Besides `input_ids`/`position_ids` `[1, N]`, the varlen kwargs describe the segments: `cu_seq_lens_q` their
    boundaries in the row, `key_index` the row positions of each segment's keys (a prefix: itself; a continuation:
    its prefix, then itself) and `cu_seq_lens_k` the boundaries in that gathered key layout."""
    ids, positions, keys, q_lengths, k_lengths = [], [], [], [], []
    offset = 0
    for prefix, continuations in groups:
        p = len(prefix)
        prefix_keys = torch.arange(offset, offset + p)
        ids.append(torch.as_tensor(prefix))
        positions.append(torch.arange(p))
        keys.append(prefix_keys)
        q_lengths.append(p)
        k_lengths.append(p)
        start = offset + p
        for c in continuations:
            r = len(c)
            ids.append(torch.as_tensor(c))
            positions.append(torch.arange(p, p + r))
            keys += [prefix_keys, torch.arange(start, start + r)]
            q_lengths.append(r)
            k_lengths.append(p + r)
            start += r
        offset = start

    def cumulative(lengths):
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        return cu

    return {
        "input_ids": torch.cat(ids)[None],
        "position_ids": torch.cat(positions)[None],
        "cu_seq_lens_q": cumulative(q_lengths),
        "cu_seq_lens_k": cumulative(k_lengths),
        "max_length_q": max(q_lengths),
        "max_length_k": max(k_lengths),
        "key_index": torch.cat(keys),
    }


def pad_sequences(ids: Sequence[torch.Tensor], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Right-padded `input_ids`/`attention_mask` `[B, T]`; `end_index[b] = len_b - 1`."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    width = int(lengths.max())
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        attention_mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "end_index": lengths - 1}


def is_packed(batch: dict) -> bool:
    return "position_ids" in batch and "attention_mask" not in batch


def model_inputs(batch: dict) -> dict:
    """The forward arguments of a padded or packed batch (no labels, no `end_index`)."""
    if is_packed(batch):
        keys = ("input_ids", "position_ids", *VARLEN_KWARGS, *SHARED_PREFIX_KWARGS)
    else:
        keys = ("input_ids", "attention_mask")
    return {k: batch[k] for k in keys if k in batch}


def count_tokens(batch: dict) -> torch.Tensor:
    """Non-padding tokens in a batch."""
    if is_packed(batch):
        return torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)
    return batch["attention_mask"].sum()


# ------------------------------------------------------------------------------------------------ the head's reading
@contextlib.contextmanager
def capture_output(module: torch.nn.Module):
    """Keep the output of `module`'s forward (the per-position head logits) for the duration of the block."""
    captured: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
    try:
        yield captured
    finally:
        handle.remove()


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP/DeepSpeed/compile and PEFT wrappers (or the model itself)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=True)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ----------------------------------------------------------------------------------------------- packed attention
def _torch_varlen():
    """PyTorch's varlen flash attention (CUDA, fp16/bf16) and how this version spells causal and GQA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params


_VARLEN = _torch_varlen()
_VARLEN_WORKS: dict[str, bool] = {}  # 'device:dtype' -> the kernel ran forward and backward once


def _segments_from_positions(position_ids: torch.Tensor | None):
    """cu_seq_lens and the longest length of a packed row, from position ids restarting at 0 (None: one sequence)."""
    if position_ids is None:
        return None, None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if starts.numel() < 2:
        return None, None
    n = position_ids.shape[-1]
    cu = torch.cat([starts, torch.tensor([n], device=starts.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: the inputs', or autocast's half type (fp32 rotary outputs under bf16 autocast)."""
    if query.dtype == torch.float32 and query.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return query.dtype


def _varlen_usable(query: torch.Tensor, dtype: torch.dtype) -> bool:
    if _VARLEN is None or not query.is_cuda or dtype not in (torch.float16, torch.bfloat16):
        return False
    key = f"{query.device}:{dtype}"
    if key not in _VARLEN_WORKS:  # probe once: an unsupported GPU or build raises here, not mid-training
        try:  # with gradients even when called from inference code (scoring), so training can use it later
            with torch.inference_mode(False), torch.enable_grad():
                q = torch.randn(8, 2, 64, device=query.device, dtype=dtype, requires_grad=True)
                cu = torch.tensor([0, 3, 8], device=query.device, dtype=torch.int32)
                _call_varlen(q, q, q, cu, cu, 5, 5, None, 1).sum().backward()
            _VARLEN_WORKS[key] = True
        except Exception:  # noqa: BLE001 - any failure means: use the portable path
            _VARLEN_WORKS[key] = False
    return _VARLEN_WORKS[key]


def _call_varlen(q, k, v, cu_q, cu_k, longest_q, longest_k, scaling, groups):
    """Flash varlen attention; its causal mask is aligned bottom-right when a segment has more keys than queries."""
    varlen_attn, causal, has_gqa = _VARLEN
    kwargs = dict(causal)
    if groups > 1:
        if has_gqa:
            kwargs["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu_q, cu_k, longest_q, longest_k, scale=scaling, **kwargs)


def _causal_bottom_right(q_length: int, k_length: int, device) -> torch.Tensor | None:
    """Mask of a segment with more keys than queries: query i sees keys 0 .. i + (k_length - q_length) (the prefix
    and its own past). None when the lengths are equal (plain causal)."""
    if q_length == k_length:
        return None
    return torch.ones(q_length, k_length, dtype=torch.bool, device=device).tril(k_length - q_length)


def _repadded_attention(query, key, value, cu, longest, scaling, dropout, groups, cu_k=None, longest_k=None):
    """Causal attention per segment: scatter `[1, h, N, d]` into `[S, h, L, d]`, one sdpa call, gather back.

    `cu_k`/`longest_k`: the keys' own boundaries (shared-prefix rows); by default the queries'."""
    cu_k = cu if cu_k is None else cu_k
    longest_k = longest if longest_k is None else longest_k
    s = cu.numel() - 1

    def flat_index(bounds, width, n):
        lengths = (bounds[1:] - bounds[:-1]).long()
        seq = torch.repeat_interleave(torch.arange(s, device=query.device), lengths, output_size=n)
        return seq * width + torch.arange(n, device=query.device) - bounds[:-1].long()[seq]

    def to_padded(x, index, width):
        x = x[0].transpose(0, 1)  # [N, h, d]
        out = x.new_zeros(s * width, x.shape[1], x.shape[2]).index_copy(0, index, x)
        return out.view(s, width, x.shape[1], x.shape[2]).transpose(1, 2)

    q_index = flat_index(cu, longest, query.shape[2])
    k_index = q_index if cu_k is cu else flat_index(cu_k, longest_k, key.shape[2])
    q, k, v = (to_padded(query, q_index, longest), to_padded(key, k_index, longest_k),
               to_padded(value, k_index, longest_k))
    extra = {"enable_gqa": True} if groups > 1 else {}
    if cu_k is cu:
        # Padding sits after each sequence's tokens: with a causal mask no real query ever sees it.
        extra["is_causal"] = True
    else:
        # Bottom-right causal per segment: a real query i sees keys up to i + (k_len - q_len) < k_len, never the
        # padding after them; every row (padding rows included) keeps key 0, so no row is empty.
        offset = ((cu_k[1:] - cu_k[:-1]) - (cu[1:] - cu[:-1])).long()
        i = torch.arange(longest, device=query.device)
        j = torch.arange(longest_k, device=query.device)
        extra["attn_mask"] = (j[None, None, :] <= i[None, :, None] + offset[:, None, None])[:, None]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, **extra)
    out = out.transpose(1, 2).reshape(s * longest, out.shape[1], out.shape[3]).index_select(0, q_index)
    return out[None]


def _per_sequence_attention(query, key, value, cu, scaling, dropout, groups, cu_k=None):
    """Causal sdpa on each segment's slice of the packed row (keys: `cu_k`'s slices, by default the same);
    `[1, N, h, d]`."""
    bounds = cu.tolist()
    key_bounds = bounds if cu_k is None else cu_k.tolist()
    extra = {"enable_gqa": True} if groups > 1 else {}
    outs = []
    for a, b, c, d in zip(bounds[:-1], bounds[1:], key_bounds[:-1], key_bounds[1:]):
        mask = _causal_bottom_right(b - a, d - c, query.device)
        outs.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, c:d], value[:, :, c:d],
                                                   attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
                                                   scale=scaling, **extra))
    return torch.cat(outs, dim=2).transpose(1, 2)


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """`AttentionInterface` function: per-segment causal attention for packed rows, plain sdpa otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if packed and cu is None:
        cu, longest = _segments_from_positions(kwargs.get("position_ids"))
    if not packed or cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu = cu.to(device=query.device, dtype=torch.int32)
    if longest is None:
        longest = int((cu[1:] - cu[:-1]).max())
    cu_k, longest_k = cu, longest
    key_index = kwargs.get("key_index")
    # shared-prefix row: each segment's keys, gathered (a prefix is read by all its continuations)
    if key_index is not None:
        key_index = key_index.to(query.device)
        key, value = key.index_select(2, key_index), value.index_select(2, key_index)
        cu_k = kwargs["cu_seq_lens_k"].to(device=query.device, dtype=torch.int32)
        longest_k = kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max())
    groups = getattr(module, "num_key_value_groups", 1)
    if not query.is_cuda:  # CPU: one causal sdpa per segment (measured fastest: no padded work at all)
        return _per_sequence_attention(query, key, value, cu, scaling, dropout, groups,
                                       None if key_index is None else cu_k), None
    dtype = _compute_dtype(query)
    if dropout == 0.0 and _varlen_usable(query, dtype):
        q, k, v = (x[0].transpose(0, 1).to(dtype).contiguous() for x in (query, key, value))  # [N, h, d]
        return _call_varlen(q, k, v, cu, cu_k, int(longest), int(longest_k), scaling, groups)[None], None
    # GPU without a varlen kernel: one launch over [segments, longest] beats a launch per segment
    if key_index is None:
        return _repadded_attention(query, key, value, cu, int(longest), scaling, dropout, groups), None
    return (_repadded_attention(query, key, value, cu, int(longest), scaling, dropout, groups, cu_k, int(longest_k)),
            None)


def _packed_mask(*args, **kwargs):
    """Mask for `hs2_packed_sdpa`: none for a packed row (the attention separates sequences), sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if not args and kwargs.get("attention_mask") is None and kwargs.get("batch_size") == 1 and (
        kwargs.get("q_length") == kwargs.get("kv_length")
    ):
        return None
    return sdpa_mask(*args, **kwargs)


def register_packed_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)
    return PACKED_ATTENTION


def attention_implementation(model: torch.nn.Module) -> str | None:
    return getattr(base_model(model).config, "_attn_implementation", None)


def prepare_for_packing(model: torch.nn.Module, shared_prefix: bool = False) -> bool:
    """Make `model` take packed batches; False when its attention implementation cannot separate sequences.

    `shared_prefix`: shared-prefix rows (`pack_shared_prefix`), which only `hs2_packed_sdpa` reads: flash-attention
    models are switched to it too (on GPU it runs PyTorch's varlen flash kernel)."""
    impl = attention_implementation(model)
    if impl in NATIVE_VARLEN and not (shared_prefix and impl != PACKED_ATTENTION):
        return True
    if impl not in SWITCHABLE + (NATIVE_VARLEN if shared_prefix else ()):
        return False
    register_packed_attention()
    base_model(model).set_attn_implementation(PACKED_ATTENTION)
    return True


@contextlib.contextmanager
def packed_attention(model: torch.nn.Module, shared_prefix: bool = False):
    """Within the block the model takes packed batches (yields whether it can); its implementation is restored."""
    before = attention_implementation(model)
    ok = prepare_for_packing(model, shared_prefix)
    try:
        yield ok
    finally:
        if ok and attention_implementation(model) != before and before is not None:
            base_model(model).set_attn_implementation(before)


def packed_kernel(device: str | torch.device, dtype: torch.dtype) -> str:
    """Which kernel `hs2_packed_sdpa` uses for packed rows on this device and dtype (for reports)."""
    probe = torch.empty(1, device=device)
    if not probe.is_cuda:
        return "per-sequence sdpa (CPU)"
    if _varlen_usable(probe, dtype):
        return "torch varlen flash attention"
    return "re-padded sdpa (no varlen kernel in this PyTorch/GPU)"
