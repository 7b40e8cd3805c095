"""Reward models: tokenizer rules, a new k-head RM from a base LM, loading one back, checking that a folder is one.

A SteerLM reward model is a plain `AutoModelForSequenceClassification` with `num_labels == k` (5 by default),
`problem_type == "regression"` and `id2label` naming the attributes in order, so it reloads anywhere without hs2trl.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .attributes import ATTRIBUTES
from .data.chat import end_of_turn_id
from .errors import Hs2Error
from .pretrained import resolve_model

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


def reward_config_kwargs(attributes: Sequence[str]) -> dict:
    return {
        "num_labels": len(attributes),
        "id2label": dict(enumerate(attributes)),
        "label2id": {name: i for i, name in enumerate(attributes)},
        "problem_type": "regression",
    }


def init_reward_model(base: str, tokenizer, attributes: Sequence[str] = ATTRIBUTES, **model_init_kwargs):
    """A base LM (or an existing RM) with a k-output linear head on the end-of-response token."""
    from transformers import AutoModelForSequenceClassification

    from .trainers.trl_internals import suppress_seqcls_warning

    model_init_kwargs.setdefault("dtype", "float32")
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(base), **reward_config_kwargs(attributes), **model_init_kwargs
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def reward_attributes(config) -> list[str]:
    """The attribute names of a reward model's outputs, in head order."""
    id2label = config.id2label or {}
    return [id2label.get(i, id2label.get(str(i), f"LABEL_{i}")) for i in range(config.num_labels)]


def check_reward_model(path: str) -> dict:
    """Raise a one-line error unless `path` holds a sequence-classification reward model; returns its config.json."""
    config_file = Path(path) / "config.json"
    if Path(path).exists():
        if not config_file.is_file():
            raise Hs2Error(f"{path}: not a model folder (no config.json)")
        config = json.loads(config_file.read_text())
        if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
            raise Hs2Error(
                f"{path}: not a reward model (architecture {config.get('architectures')}; expected a "
                "*ForSequenceClassification head, e.g. from `hs2 train-rm`)"
            )
        return config
    return {}  # a Hub id: checked when loaded


def load_reward_model(name_or_path: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer, attribute names) of a trained reward model, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name_or_path)
    check_reward_model(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise Hs2Error(f"reward model '{name_or_path}': cannot load ({str(err).splitlines()[0]})") from None
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer, reward_attributes(model.config)
