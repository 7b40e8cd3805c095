"""Reward models: a new k-head RM from a base LM, and the config that names its outputs (loading one back:
`hs2trl.rm.loading`).

A SteerLM reward model is a plain `AutoModelForSequenceClassification` with `num_labels == k` (5 by default),
`problem_type == "regression"` and `id2label` naming the attributes in order, so it reloads anywhere without hs2trl.
"""

from __future__ import annotations

from collections.abc import Sequence

from hs2trl.rm.attributes import ATTRIBUTES
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

    from hs2trl.trl_internals import suppress_seqcls_warning

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
