"""What a pairwise (Bradley-Terry) reward model starts from: a base LM (a fresh head), a 1-output RM (its own head),
or one output of a k-head RM (`--init-head`: one head, or a fold such as goodness). HelpSteer2-Preference's best RM
starts its scaled-BT stage from the helpfulness-only regression RM, head included."""

from __future__ import annotations

import os
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error


def reward_outputs(model_path: str, strict: bool = True) -> list[str] | None:
    """The output names of a reward model, read from its config (no weights); None for a model without a
    sequence-classification head (a base LM: it gets a fresh head). Not `strict`: None where the config cannot be
    read (a Hub id offline; the stage reads it when it loads)."""
    import json

    from hs2trl.rm.loading import is_adapter_folder, reward_model_attributes

    if os.path.isdir(model_path):
        if is_adapter_folder(model_path):
            return reward_model_attributes(model_path)
        config_file = Path(model_path, "config.json")
        architectures = json.loads(config_file.read_text()).get("architectures") if config_file.is_file() else None
    else:
        from transformers import AutoConfig

        try:
            architectures = AutoConfig.from_pretrained(model_path).architectures
        except (OSError, ValueError) as err:
            if not strict:
                return None
            raise Hs2Error(f"model '{model_path}': cannot read its config ({str(err).splitlines()[0]})") from None
    if not any(a.endswith("ForSequenceClassification") for a in architectures or []):
        return None
    return reward_model_attributes(model_path)


def starting_head(model_name: str, init_head: str | None, strict: bool = True) -> str:
    """Which head a pairwise run starts from, in words; a --init-head that does not fit the model is one line."""
    from hs2trl.rm.rewards import head_weights
    from hs2trl.runtime.pretrained import resolve_model

    outputs = reward_outputs(resolve_model(model_name), strict)
    if outputs is None:
        if init_head is not None and (strict or os.path.isdir(resolve_model(model_name))):
            raise Hs2Error(f"init_head: '{init_head}' needs a reward model to start from, but {model_name} has no "
                           "sequence-classification head (a fresh head is made); drop --init-head")
        return "a fresh head"
    if len(outputs) == 1:
        if init_head is not None and init_head != outputs[0]:
            raise Hs2Error(f"init_head: {model_name} is a 1-output reward model ('{outputs[0]}'), which starts from "
                           f"its own head; drop --init-head {init_head}")
        return f"the model's own 1-output head ('{outputs[0]}')"
    if init_head is None:
        raise Hs2Error(f"init_head: missing: {model_name} is a {len(outputs)}-output reward model "
                       f"({', '.join(outputs)}) and a pairwise loss trains one output: choose it with --init-head "
                       "NAME (e.g. helpfulness), or fold the heads with --init-head goodness")
    try:
        head_weights(outputs, init_head)
    except Hs2Error as err:
        raise Hs2Error(f"init_head: {err} ({model_name})") from None
    if init_head in outputs:
        return f"head '{init_head}' (output {outputs.index(init_head) + 1} of {len(outputs)})"
    return f"the '{init_head}' fold of its {len(outputs)} heads"


def starting_model(model_name: str, init_head: str | None, model_init_kwargs: dict | None):
    """What PreferenceRewardTrainer starts from: a base LM's path (TRL adds a seeded 1-output head), or a reward
    model through the one RM loader, its k outputs folded to the one `init_head` names (a 1-output RM as it is)."""
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import fold_to_one_output, head_weights
    from hs2trl.runtime.pretrained import resolve_model

    path = resolve_model(model_name)
    outputs = reward_outputs(path)
    if outputs is None:
        return path
    if len(outputs) > 1:
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():  # the head would load partitioned: there is no row to take
            raise Hs2Error(f"init_head: folding {model_name}'s {len(outputs)} heads needs the whole head, which "
                           "ZeRO-3 partitions: fold it first (`hs2 export-rm --weights ...`, one-hot numbers for one "
                           "head) and start from that 1-output model")
    dtype = (model_init_kwargs or {}).get("dtype") or "float32"
    model = load_reward_model(path, dtype=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")).model
    if len(outputs) > 1:
        fold_to_one_output(model, head_weights(outputs, init_head), init_head)
    return model
