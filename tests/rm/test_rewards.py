"""Scalar rewards: weights, the folded head (ScalarRewardModel, export-rm) against the 5-head model, normalisation."""

from __future__ import annotations

import json

import pytest
import torch

from hs2trl.rm.attributes import WEIGHT_PRESETS
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import ATTRS, helpsteer_rows, run_hs2

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue, like the sky on a clear day."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me a long story about a dragon who learned to bake bread in a small village."},
     {"role": "assistant", "content": "Once upon a time a dragon named Ember found that fire was good for more than "
                                      "frightening knights: it baked the finest loaves in the valley."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"},
     {"role": "assistant", "content": "Lima."}],
]


def five_head_rewards(model_dir: str, weights) -> torch.Tensor:
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    model, tok, _ = load_reward_model(model_dir)
    return score_conversations(model, tok, CONVERSATIONS, batch_size=3) @ torch.tensor(weights)


def test_weights_for_matches_presets_by_name():
    from hs2trl.rm.rewards import weights_for, weights_key

    assert weights_for(ATTRS, "goodness") == WEIGHT_PRESETS["goodness"]
    # A model with its heads in another order still gets each attribute's weight.
    reordered = ["verbosity", "helpfulness", "correctness", "coherence", "complexity"]
    assert weights_for(reordered, "rewardbench-llama3-70b") == (-0.4, 0.65, 0.8, 0.45, 0.55)
    assert weights_for(["helpfulness", "correctness", "coherence"], "goodness") == (0.65, 0.8, 0.45)
    assert weights_for(ATTRS, "1,0,0,0,-1") == (1.0, 0.0, 0.0, 0.0, -1.0)
    with pytest.raises(Hs2Error, match="does not predict"):
        weights_for(["helpfulness", "correctness"], "goodness")  # coherence has weight 0.45
    with pytest.raises(Hs2Error, match="5 values given for 3"):
        weights_for(["a", "b", "c"], "1,2,3,4,5")
    assert weights_key("goodness") == "goodness"
    assert weights_key("1, 0.50,0,0,0") == "1,0.5,0,0,0"


def test_scalar_reward_model_equals_weighted_five_heads(tiny_rm_dir, tokenizer):
    from hs2trl.data.chat import encode_conversation
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import ScalarRewardModel

    expected = (five_head_rewards(tiny_rm_dir, WEIGHT_PRESETS["goodness"]) - 0.3) / 2.0
    model, tok, _ = load_reward_model(tiny_rm_dir)
    scalar = ScalarRewardModel(model, "goodness", mean=0.3, std=2.0)
    seqs = [encode_conversation(tok, c) for c in CONVERSATIONS]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])  # right-padded batch
    with torch.no_grad():
        got = scalar(ids, attention_mask=(ids != tok.pad_token_id).long())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert scalar.score(torch.zeros(1, model.config.hidden_size)).shape == (1, 1)  # TRL's PPO shape


def test_export_logit_equals_weighted_sum(tiny_rm_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from hs2trl.data.chat import render
    from hs2trl.rm.rewards import export_scalar_model, read_reward_info

    for spec, label in (("rewardbench-nemotron4-340b", "rewardbench-nemotron4-340b"), ("0.5,-1,0,2,0.25", "reward")):
        out = tmp_path / label
        export_scalar_model(tiny_rm_dir, spec, str(out))
        weights = [float(w) for w in spec.split(",")] if "," in spec else WEIGHT_PRESETS[spec]
        expected = five_head_rewards(tiny_rm_dir, weights)
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()  # plain transformers, no hs2trl
        tok = AutoTokenizer.from_pretrained(out)
        assert model.config.num_labels == 1 and model.config.id2label == {0: label}
        assert model.config.problem_type == "regression"
        texts = [render(tok, c).rstrip() for c in CONVERSATIONS]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            got = model(**batch).logits[:, 0]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        info = read_reward_info(str(out))["export"]
        assert list(info["weights"].values()) == list(weights) and list(info["weights"]) == ATTRS
    # An HF pipeline returns the raw logit (problem_type regression: no sigmoid).
    scorer = pipeline("text-classification", model=str(tmp_path / "reward"), device="cpu")
    assert scorer(texts[0])[0]["score"] == pytest.approx(float(got[0]), abs=1e-4)


def test_normalization_is_measured_stored_and_carried_by_export(tiny_rm_dir, tmp_path):
    import shutil

    from hs2trl.data.helpsteer2 import conversation
    from hs2trl.data.records import Record
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import ScalarRewardModel, export_scalar_model, measure_normalization, stored_normalization
    from hs2trl.rm.scoring import score_conversations

    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)
    convs = [conversation(Record("x", i, r)) for i, r in enumerate(helpsteer_rows(4), start=1)]
    entry = measure_normalization(str(rm), convs, "goodness", dataset="hand-made", progress=False)
    model, tok, _ = load_reward_model(str(rm))
    goodness = score_conversations(model, tok, convs) @ torch.tensor(WEIGHT_PRESETS["goodness"])
    assert entry["name"] == "goodness" and entry["n"] == len(convs) == 8
    assert entry["mean"] == pytest.approx(float(goodness.mean()), abs=1e-6)
    assert entry["std"] == pytest.approx(float(goodness.std()), abs=1e-6)
    assert stored_normalization(str(rm), "goodness") == pytest.approx((entry["mean"], entry["std"]))
    assert stored_normalization(str(rm), "rewardbench-llama3-70b") is None
    # A second weighting is added next to the first, not over it.
    measure_normalization(str(rm), convs, "1,0,0,0,0", progress=False)
    assert stored_normalization(str(rm), "goodness") is not None and stored_normalization(str(rm), "1,0,0,0,0")
    # Normalised with it, the rewards of those responses have mean 0 and std 1.
    scalar = ScalarRewardModel(model, "goodness", *stored_normalization(str(rm), "goodness"))
    from hs2trl.data.chat import encode_conversation

    with torch.no_grad():
        normalised = torch.stack([scalar(torch.tensor([encode_conversation(tok, c)]))[0] for c in convs])
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-4)
    # The export's logit is exactly the goodness reward: its normalisation travels with it.
    export_scalar_model(str(rm), "goodness", str(tmp_path / "exported"))
    assert stored_normalization(str(tmp_path / "exported"), "goodness") == stored_normalization(str(rm), "goodness")


def test_head_with_bias_is_folded_too(tiny_rm_dir):
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import ScalarRewardModel
    from hs2trl.rm.scoring import score_conversations

    model, tok, _ = load_reward_model(tiny_rm_dir)
    biased = torch.nn.Linear(model.score.in_features, 5, bias=True)
    with torch.no_grad():
        biased.weight.copy_(model.score.weight)
        biased.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0, 4.0]))
    model.score = biased
    w = WEIGHT_PRESETS["rewardbench-llama3-70b"]
    expected = score_conversations(model, tok, CONVERSATIONS[:1]) @ torch.tensor(w)
    scalar = ScalarRewardModel(model, w)
    from hs2trl.data.chat import encode_conversation

    with torch.no_grad():
        got = scalar(torch.tensor([encode_conversation(tok, CONVERSATIONS[0])]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_export_rm_cli(tiny_rm_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hs2trl.data.chat import render

    out = tmp_path / "goodness-rm"
    proc = run_hs2("export-rm", "--model", tiny_rm_dir, "--weights", "goodness", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0.65*helpfulness + 0.8*correctness + 0.45*coherence" in proc.stdout
    assert "check: max |exported - weighted sum|" in proc.stdout
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    expected = five_head_rewards(tiny_rm_dir, WEIGHT_PRESETS["goodness"])
    for conv, want in zip(CONVERSATIONS, expected):
        ids = tok(render(tok, conv).rstrip(), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert float(model(**ids).logits[0, 0]) == pytest.approx(float(want), abs=1e-4)
    assert json.loads((out / "hs2trl_reward.json").read_text())["export"]["weights_name"] == "goodness"
    # Folding a 1-output model again is a user mistake: one line, exit 2.
    again = run_hs2("export-rm", "--model", str(out), "--weights", "goodness", "--output", str(tmp_path / "again"))
    assert (again.returncode == 2 and again.stderr.strip().startswith("hs2: error:")
            and "already a 1-output" in again.stderr)
    assert len(again.stderr.strip().splitlines()) == 1
