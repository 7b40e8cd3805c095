"""Reward models: tokenizer rules, a new k-head RM from a base LM, loading one back, checking that a folder is one.

A SteerLM reward model is a plain `AutoModelForSequenceClassification` with `num_labels == k` (5 by default),
`problem_type == "regression"` and `id2label` naming the attributes in order, so it reloads anywhere without hs2trl.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.models import load_tokenizer
from hs2trl.runtime.pretrained import resolve_model


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

    from hs2trl.trainers.trl_internals import suppress_seqcls_warning

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
