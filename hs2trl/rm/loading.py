"""Loading a reward model: the one loader, and the checks that fail in one line before hours of work.

A reward model is named by a local folder, a Hub id or a `pkg:` name (`runtime.pretrained.resolve_model`). It is a
`*ForSequenceClassification` model with k attribute outputs (`hs2 train-rm`) or one scalar reward (`hs2 export-rm`,
scored as it is). A folder may instead hold a PEFT adapter over one (`adapter_config.json`, e.g. the `adapter/` that
`hs2 train-rm --use_peft` writes): its base is loaded with the adapter's head, and the adapter is merged in, as
`hs2 train-rm` merges it into the model it saves, so every consumer gets the same plain model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.rm.head import HEAD_NAMES
from hs2trl.rm.modeling import reward_attributes, reward_config_kwargs
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.models import load_tokenizer
from hs2trl.runtime.pretrained import resolve_model

ADAPTER_CONFIG = "adapter_config.json"


class LoadedRM(NamedTuple):
    """A reward model ready to score (eval mode); unpacks as `model, tokenizer, attributes`."""

    model: Any
    tokenizer: Any
    attributes: list[str]  # the output names, in head order


# ----------------------------------------------------------------------------------------------- checks (no weights)


def check_reward_model(path: str) -> dict:
    """Raise a one-line error unless `path` holds a sequence-classification reward model or a PEFT adapter for one;
    returns its config.json ({} for a Hub id or an adapter: checked when it loads)."""
    folder = Path(path)
    if not folder.exists():
        return {}  # a Hub id: checked when loaded
    if is_adapter_folder(folder):
        _check_adapter(path)
        return {}
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise Hs2Error(f"{path}: not a model folder (no config.json)")
    config = json.loads(config_file.read_text())
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise Hs2Error(
            f"{path}: not a reward model (architecture {config.get('architectures')}; expected a "
            "*ForSequenceClassification head, e.g. from `hs2 train-rm`)"
        )
    return config


def probe_reward_model(name_or_path: str):
    """Fail early, in one line, when the reward model is neither a reward-model folder nor loadable as a Hub id (a
    typo would otherwise surface only after hours of sampling). Returns its tokenizer."""
    path = resolve_model(name_or_path)
    if os.path.isdir(path):
        check_reward_model(path)
    try:
        return load_tokenizer(_tokenizer_source(path))
    except Hs2Error as err:
        raise Hs2Error(f"reward model '{name_or_path}': no such local folder, and not loadable as a Hub id "
                       f"({str(err).split('(', 1)[-1].rstrip(')')})") from None


def reward_model_attributes(name_or_path: str) -> list[str]:
    """The reward model's output names, read from its config (no weights loaded)."""
    path = resolve_model(name_or_path)
    check_reward_model(path)
    try:
        return reward_attributes(_reward_config(path))
    except (OSError, ValueError) as err:
        raise Hs2Error(f"reward model '{name_or_path}': cannot load its config ({str(err).splitlines()[0]})") from None


# ----------------------------------------------------------------------------------------------- the loader


def load_reward_model(name_or_path: str, *, dtype: str | None = None, device: str | None = None,
                      device_map: str | dict | None = None, spread: bool = False) -> LoadedRM:
    """The reward model, its tokenizer and its output names, in eval mode.

    `dtype`: float32 unless given ("auto" keeps the checkpoint's). Placement: `device_map` (transformers' own, e.g.
    "auto"), or `spread` over every visible GPU (`device_map="auto"`) when this process sees several (a 70B RM in
    one process), else `device`; with none of them the model stays where it loads (CPU)."""
    import torch

    path = resolve_model(name_or_path)
    check_reward_model(path)
    if spread and device_map is None and torch.cuda.device_count() > 1:
        device_map = "auto"
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        if is_adapter_folder(path):
            model, tokenizer = _load_adapter(path, dtype or "float32", placement)
        else:
            model, tokenizer = _load_model(path, dtype or "float32", placement), load_tokenizer(path)
    except (OSError, ValueError) as err:
        raise Hs2Error(f"reward model '{name_or_path}': cannot load ({str(err).splitlines()[0]})") from None
    if model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None and device_map is None:
        model.to(device)
    return LoadedRM(model.eval(), tokenizer, reward_attributes(model.config))


def _load_model(path: str, dtype: str, placement: dict, config=None):
    from transformers import AutoModelForSequenceClassification

    extra = {"config": config} if config is not None else {}
    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **placement, **extra)


# ----------------------------------------------------------------------------------------------- PEFT adapters


def is_adapter_folder(path: str | Path) -> bool:
    """A local PEFT adapter (adapter_config.json) without a full model beside it."""
    folder = Path(path)
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def _adapter_config(path: str) -> dict:
    try:
        return json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise Hs2Error(f"{path}/{ADAPTER_CONFIG}: malformed JSON ({err.msg} at line {err.lineno})") from None


def _check_adapter(path: str) -> None:
    """An adapter for a sequence-classification model: PEFT's SEQ_CLS task, or the head saved with the adapter."""
    config = _adapter_config(path)
    if config.get("task_type") != "SEQ_CLS" and not set(config.get("modules_to_save") or []) & set(HEAD_NAMES):
        raise Hs2Error(f"{path}: not a reward model (a PEFT adapter for task {config.get('task_type')}, without a "
                       "`score` head; expected a sequence-classification adapter, e.g. from `hs2 train-rm`)")
    if not config.get("base_model_name_or_path"):
        raise Hs2Error(f"{path}: PEFT adapter without base_model_name_or_path in {ADAPTER_CONFIG}")


def _adapter_outputs(path: str) -> int | None:
    """The number of outputs of the head saved with the adapter (None: the adapter keeps the base's head)."""
    from safetensors import safe_open

    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if parts[-1] == "weight" and any(name in parts for name in HEAD_NAMES) and "lora_A" not in parts:
                return f.get_slice(key).get_shape()[0]
    return None


def _adapter_labels(path: str, base_config) -> list[str]:
    """The adapter's output names: the base's when the head keeps its size (the base is a reward model already), the
    HelpSteer2 attributes for a new 5-output head (as `hs2 train-rm` names it), else generic labels."""
    outputs = _adapter_outputs(path)
    names = reward_attributes(base_config)
    if outputs is None or outputs == len(names):
        return names
    return list(ATTRIBUTES) if outputs == len(ATTRIBUTES) else [f"LABEL_{i}" for i in range(outputs)]


def _adapter_base(path: str) -> str:
    return resolve_model(_adapter_config(path)["base_model_name_or_path"])


def _reward_config(path: str):
    """The config the reward model loads with: its own, or for an adapter, its base's with the adapter's head."""
    from transformers import AutoConfig

    if not is_adapter_folder(path):
        return AutoConfig.from_pretrained(path)
    base_config = AutoConfig.from_pretrained(_adapter_base(path))
    base_config.update(reward_config_kwargs(_adapter_labels(path, base_config)))
    return base_config


def _load_adapter(path: str, dtype: str, placement: dict):
    """(merged model, tokenizer): the base with the adapter's head, the adapter applied, then merged in."""
    from peft import PeftModel

    from hs2trl.trl_internals import suppress_seqcls_warning

    tokenizer = load_tokenizer(_tokenizer_source(path))
    with suppress_seqcls_warning():  # the base's head is new here: the adapter brings the trained one
        model = _load_model(_adapter_base(path), dtype, placement, config=_reward_config(path))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # grown in training, saved with the adapter
        model.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(model, path).merge_and_unload(), tokenizer


def _tokenizer_source(path: str) -> str:
    """Where the tokenizer is: beside the model, or for an adapter saved without one, with its base."""
    if is_adapter_folder(path) and not (Path(path) / "tokenizer_config.json").is_file():
        return _adapter_base(path)
    return path
