"""The one reward-model loader (folders, PEFT adapters, one-line errors) and the one head finder."""

from __future__ import annotations

import json

import pytest
import torch

from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import ATTRS

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
]


def lora_reward_model(tiny_lm_dir, tokenizer):
    """A 5-head RM from the tiny LM, LoRA-wrapped with its new head trained in full (as `hs2 train-rm` does)."""
    from peft import LoraConfig, get_peft_model

    from hs2trl.rm.modeling import init_reward_model

    torch.manual_seed(0)
    model = init_reward_model(tiny_lm_dir, tokenizer, ATTRS)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                        init_lora_weights=False)  # non-zero LoRA weights: the adapter must change the scores
    return get_peft_model(model, config)


def test_adapter_folder_loads_base_plus_adapter_merged(tmp_path, tiny_lm_dir, tokenizer):
    from hs2trl.rm.loading import check_reward_model, load_reward_model, probe_reward_model, reward_model_attributes
    from hs2trl.rm.scoring import score_conversations

    peft_model = lora_reward_model(tiny_lm_dir, tokenizer)
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    expected = score_conversations(peft_model.eval(), tokenizer, CONVERSATIONS)

    assert check_reward_model(str(tmp_path / "adapter")) == {}
    assert reward_model_attributes(str(tmp_path / "adapter")) == ATTRS
    assert len(probe_reward_model(str(tmp_path / "adapter"))) == len(tokenizer)
    loaded = load_reward_model(str(tmp_path / "adapter"))
    assert loaded.attributes == ATTRS and not loaded.model.training
    assert not hasattr(loaded.model, "peft_config"), "the adapter is merged: a plain *ForSequenceClassification"
    torch.testing.assert_close(score_conversations(loaded.model, loaded.tokenizer, CONVERSATIONS), expected)


def test_adapter_for_a_causal_lm_is_not_a_reward_model(tmp_path):
    from hs2trl.rm.loading import check_reward_model

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "x", "modules_to_save": None}))
    with pytest.raises(Hs2Error, match="not a reward model") as err:
        check_reward_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_load_errors_are_one_line(tiny_lm_dir, tmp_path):
    from hs2trl.rm.loading import load_reward_model

    with pytest.raises(Hs2Error, match="not a reward model"):
        load_reward_model(tiny_lm_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Hs2Error, match="not a model folder"):
        load_reward_model(str(tmp_path / "empty"))


def test_head_finder_unwraps_peft_and_needs_a_linear_head(tiny_rm_dir, tiny_lm_dir, tokenizer):
    from hs2trl.rm.head import reward_head
    from hs2trl.rm.loading import load_reward_model

    model = load_reward_model(tiny_rm_dir).model
    assert reward_head(model) is model.score
    peft_model = lora_reward_model(tiny_lm_dir, tokenizer)
    assert reward_head(peft_model, per_position=True) is peft_model.get_base_model().score  # PEFT's copy runs there
    lm = torch.nn.Module()
    assert reward_head(lm, required=False) is None
    with pytest.raises(Hs2Error, match="no linear `score` head"):
        reward_head(lm)
