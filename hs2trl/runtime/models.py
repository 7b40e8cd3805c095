"""Loading models the same way everywhere: the tokenizer rules (a pad token distinct from the end-of-turn token),
from_pretrained kwargs from TRL's ModelConfig, the policy with its generation tokens, causal LMs for sampling and
scoring (`load_causal_lm`, `Lazy`) and the dtype rule (`auto` is bf16 on a GPU, fp32 on a CPU).

Reward models load through `hs2trl.rm.loading`, which uses the tokenizer rules here."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from hs2trl.data.chat import end_of_turn_id
from hs2trl.runtime.errors import Hs2Error, first_line
from hs2trl.runtime.pretrained import resolve_model

DTYPES = ("bfloat16", "float16", "float32")


def model_init_kwargs(model_args, training_args=None) -> dict:
    """from_pretrained kwargs from TRL's ModelConfig (dtype, attention, revision, 4/8-bit) and `model_init_kwargs`."""
    import torch
    from accelerate import PartialState
    from trl import get_quantization_config

    kwargs = dict(getattr(training_args, "model_init_kwargs", None) or {})
    dtype = kwargs.get("dtype", model_args.dtype or "float32")
    kwargs["dtype"] = getattr(torch, dtype) if dtype in DTYPES else dtype
    if model_args.attn_implementation:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    if model_args.model_revision and model_args.model_revision != "main":
        kwargs.setdefault("revision", model_args.model_revision)
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}  # one full copy per process
    return kwargs


def load_policy_tokenizer(name_or_path: str, chat_template_path: str | None = None):
    return load_tokenizer(name_or_path, chat_template_path)


def set_generation_tokens(model, tokenizer) -> None:
    """Generation stops at the end-of-turn token (and eos); padding uses the distinct pad token."""
    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_policy(name_or_path: str, tokenizer, model_args, training_args=None, **overrides):
    """A causal LM with embeddings covering the tokenizer (an added pad token) and the generation tokens set."""
    from transformers import AutoModelForCausalLM

    kwargs = {**model_init_kwargs(model_args, training_args), **overrides}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        raise Hs2Error(f"model '{name_or_path}': cannot load ({str(err).strip().splitlines()[0]})") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    set_generation_tokens(model, tokenizer)
    return model


def rank_device():
    from accelerate import PartialState

    return PartialState().device


def dtype_name(name: str) -> str:
    """`auto` is bf16 on a GPU, fp32 on a CPU; other names stay."""
    if name == "auto":
        return "bfloat16" if torch.cuda.is_available() else "float32"
    return name


def torch_dtype(name: str):
    return getattr(torch, dtype_name(name))


def spread_over_gpus() -> bool:
    """One process and several GPUs: a model is spread over all of them (`device_map="auto"`), so that a model
    too large for one GPU (70B) can still sample and score; with several processes each rank uses its own GPU."""
    from accelerate import PartialState

    return torch.cuda.device_count() > 1 and PartialState().num_processes == 1


def load_causal_lm(path: str, dtype: str = "auto"):
    """A causal LM for sampling/scoring, in eval mode, on this rank's device (or spread, see `spread_over_gpus`)."""
    from transformers import AutoModelForCausalLM

    spread = spread_over_gpus()
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(path), dtype=torch_dtype(dtype),
                                                     **({"device_map": "auto"} if spread else {}))
    except (OSError, ValueError) as err:
        raise Hs2Error(f"model '{path}': cannot load a causal LM ({first_line(err)})") from None
    return (model if spread else model.to(rank_device())).eval()


class Lazy:
    """A model loaded on first use and dropped on `free()`: a pass that is already complete loads nothing, and only
    one large model is in memory at a time."""

    def __init__(self, load):
        self._load, self._value = load, None

    def __call__(self):
        if self._value is None:
            self._value = self._load()
        return self._value

    def free(self) -> None:
        self._value = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# Tried in order when the tokenizer's pad token is missing or equals the end-of-turn/eos token.
PAD_CANDIDATES = (
    "<|endoftext|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<pad>", "<|pad|>", "<unk>"
)


ADDED_PAD_TOKEN = "<|hs2_pad|>"


def load_tokenizer(name_or_path: str, chat_template_path: str | None = None):
    """The model's tokenizer with a chat template and a pad token distinct from the token the reward head reads."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise Hs2Error(f"model '{name_or_path}': cannot load a tokenizer ({str(err).splitlines()[0]})") from None
    if chat_template_path is not None:
        if chat_template_path.endswith((".jinja", ".j2")):
            tokenizer.chat_template = Path(chat_template_path).read_text(encoding="utf-8-sig")
        else:
            tokenizer.chat_template = AutoTokenizer.from_pretrained(resolve_model(chat_template_path)).chat_template
    ensure_distinct_pad(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def ensure_distinct_pad(tokenizer) -> bool:
    """Make the pad token differ from eos and end-of-turn tokens; returns True when a new token had to be added."""
    forbidden = {tokenizer.eos_token_id}
    if tokenizer.chat_template is not None:
        forbidden.add(end_of_turn_id(tokenizer))
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in forbidden:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] not in forbidden:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    return True
