"""SteerLM 2.0 mathematics and attribute conditioning: pure torch / string tests (fast)."""

from __future__ import annotations

import math

import pytest
import torch

from hs2trl.runtime.errors import Hs2Error
from hs2trl.steer.objective import attribute_log_likelihood, level_probabilities, steerlm2_loss
from hs2trl.steer.steering import (
    DEFAULT_INFERENCE_ATTRIBUTES,
    attribute_string,
    condition,
    parse_attribute_string,
    split_condition,
)

pytestmark = pytest.mark.trl_internals  # also run on TRL 1.12 by make test-trl112


def _inputs(num_prompts=4, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = (torch.randn(num_prompts, n, generator=g, dtype=torch.float64) * 5 - 40).requires_grad_()
    steerlm = policy.detach() + torch.randn(num_prompts, n, generator=g, dtype=torch.float64)
    log_weights = torch.randn(num_prompts, n, generator=g, dtype=torch.float64) * 3
    return policy, steerlm, log_weights


# ------------------------------------------------------------------------------------------------------ loss


def test_loss_gradient_is_minus_w_minus_b_over_num_prompts():
    policy, steerlm, log_weights = _inputs()
    loss, kl = steerlm2_loss(policy, steerlm, log_weights)
    loss.backward()
    w = torch.softmax(log_weights, -1)
    b = torch.softmax(policy.detach() - steerlm, -1)
    torch.testing.assert_close(policy.grad, -(w - b) / policy.shape[0])
    # the loss value and the monitor follow the formulas too
    torch.testing.assert_close(loss.detach(), (-(w - b) * policy.detach()).sum(-1).mean())
    torch.testing.assert_close(kl.double(), (w * (w.log() - b.log())).sum(-1).mean(), rtol=1e-5, atol=1e-6)
    assert kl.item() > 0


def test_zero_gradient_and_kl_when_weights_match():
    policy, steerlm, _ = _inputs(seed=1)
    # log w' = log b' + a per-prompt constant (softmax is shift-invariant): w' = b' exactly
    log_weights = policy.detach() - steerlm + torch.randn(policy.shape[0], 1, dtype=torch.float64)
    loss, kl = steerlm2_loss(policy, steerlm, log_weights)
    loss.backward()
    assert policy.grad.abs().max().item() < 1e-12
    assert abs(kl.item()) < 1e-6


def test_b_has_no_gradient_path_and_length_scale_divides():
    policy, steerlm, log_weights = _inputs(seed=2)
    scale = torch.tensor([10.0, 20.0, 5.0, 1.0], dtype=torch.float64)
    loss, _ = steerlm2_loss(policy, steerlm, log_weights, length_scale=scale)
    loss.backward()
    w = torch.softmax(log_weights, -1)
    b = torch.softmax(policy.detach() - steerlm, -1)
    torch.testing.assert_close(policy.grad, -(w - b) / scale[:, None] / policy.shape[0])


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="num_prompts, n"):
        steerlm2_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_gradient_step_raises_likelihood_of_the_highest_weight_sample():
    """A free 'policy' (one logit per sample) moved by the loss puts more mass on the highest-weight sample."""
    logits = torch.zeros(1, 4, requires_grad=True)
    steerlm = torch.log_softmax(torch.zeros(1, 4), -1)  # Q' uniform over the 4 samples
    log_weights = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        loss, _ = steerlm2_loss(torch.log_softmax(logits, -1), steerlm, log_weights)
        loss.backward()
        opt.step()
    probs = torch.softmax(logits.detach(), -1)
    assert probs.argmax().item() == 1
    torch.testing.assert_close(probs, torch.softmax(log_weights, -1), atol=0.02, rtol=0)  # fixed point: b' = w'


# -------------------------------------------------------------------------------------------------- Beta model


def test_level_probabilities_sum_to_one():
    predicted = torch.rand(64, 5) * 5.0 - 0.5  # includes values outside 0-4 (clamped)
    probs = level_probabilities(predicted)
    assert probs.shape == (64, 5, 5)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, 5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_level_probabilities_peak_at_the_predicted_level():
    for level in range(5):
        probs = level_probabilities(torch.full((1, 5), float(level)))
        assert probs[0, 0].argmax().item() == level


def test_attribute_log_likelihood_matches_the_beta_bins():
    from scipy.stats import beta as beta_dist

    predicted = torch.tensor([[3.2, 0.4, 2.0, 1.7, 4.0]])
    target = torch.tensor([[3, 0, 2, 2, 4]])
    expected = 0.0
    for r, n in zip(predicted[0].tolist(), target[0].tolist()):
        r01 = min(max(r / 4, 1e-3), 1 - 1e-3)
        a, b = 24 * r01, 24 - 24 * r01
        hi, lo = min((n + 0.5) / 4, 1.0), max((n - 0.5) / 4, 0.0)
        expected += math.log(max(beta_dist.cdf(hi, a, b) - beta_dist.cdf(lo, a, b), 1e-12))
    got = attribute_log_likelihood(predicted, target)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_attribute_log_likelihood_floors_and_validates():
    predicted = torch.tensor([[4.0] * 5, [0.0] * 5])
    target = torch.tensor([[0] * 5, [4] * 5])  # far from the prediction: floored, finite
    got = attribute_log_likelihood(predicted, target)
    assert torch.isfinite(got).all()
    assert got[0].item() >= 5 * math.log(1e-12) - 1e-6
    with pytest.raises(ValueError, match="0..4"):
        attribute_log_likelihood(predicted, torch.full((2, 5), 5))
    with pytest.raises(ValueError, match="same shape"):
        attribute_log_likelihood(predicted, torch.zeros(2, 4, dtype=torch.long))
    # concentration: a sharper Beta is more confident about the predicted level
    exact = torch.tensor([[2.0] * 5])
    assert attribute_log_likelihood(exact, torch.tensor([[2] * 5]), 100.0) > attribute_log_likelihood(
        exact, torch.tensor([[2] * 5]), 24.0)


# ---------------------------------------------------------------------------------------------- conditioning


def test_attribute_string_round_trip_and_defaults():
    text = "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2"
    assert attribute_string(DEFAULT_INFERENCE_ATTRIBUTES) == text
    assert attribute_string([4, 4, 4, 2, 2]) == text
    assert parse_attribute_string(text) == DEFAULT_INFERENCE_ATTRIBUTES
    for levels in ([0, 1, 2, 3, 4], [4, 0, 3, 1, 2]):
        assert list(parse_attribute_string(attribute_string(levels)).values()) == levels
    # any order and spaces in, canonical order out; defaults fill what is left out
    assert attribute_string(
        parse_attribute_string(" verbosity : 2, complexity:2,coherence:4,correctness:4,helpfulness:4")) == text
    assert parse_attribute_string("verbosity:0", defaults=DEFAULT_INFERENCE_ATTRIBUTES)["verbosity"] == 0


@pytest.mark.parametrize("bad, message", [
    ("helpfulness:5,correctness:4,coherence:4,complexity:2,verbosity:2", "outside 0-4"),
    ("helpfulness:4,correctness:4,coherence:4,complexity:2", "missing verbosity"),
    ("helpfulness:4,humour:4,correctness:4,coherence:4,complexity:2,verbosity:2", "unknown attribute 'humour'"),
    ("helpfulness:4,helpfulness:3", "twice"),
    ("helpfulness=4", "not name:level"),
    ("helpfulness:2.5,correctness:4,coherence:4,complexity:2,verbosity:2", "integer"),
    ("", "empty"),
])
def test_bad_attribute_strings_are_one_line_errors(bad, message):
    with pytest.raises(Hs2Error, match=message) as err:
        parse_attribute_string(bad)
    assert "\n" not in str(err.value)


def test_condition_adds_a_system_message_and_round_trips():
    prompt = [{"role": "user", "content": "Hi"}]
    conditioned = condition(prompt, DEFAULT_INFERENCE_ATTRIBUTES)
    assert conditioned[0] == {"role": "system", "content": attribute_string(DEFAULT_INFERENCE_ATTRIBUTES)}
    assert conditioned[1:] == prompt
    assert split_condition(conditioned) == (DEFAULT_INFERENCE_ATTRIBUTES, prompt)
    assert split_condition(prompt) == (None, prompt)
    # re-conditioning replaces the attribute line instead of stacking a second one
    again = condition(conditioned, [0, 0, 0, 0, 0])
    assert again[0]["content"] == attribute_string([0, 0, 0, 0, 0]) and len(again) == 2


def test_condition_keeps_an_existing_system_message():
    prompt = [{"role": "system", "content": "You are a pirate.\nSpeak like one."}, {"role": "user", "content": "Hi"}]
    conditioned = condition(prompt, [1, 2, 3, 4, 0])
    assert conditioned[0]["content"] == attribute_string([1, 2, 3, 4, 0]) + "\n\nYou are a pirate.\nSpeak like one."
    assert split_condition(conditioned) == (parse_attribute_string(attribute_string([1, 2, 3, 4, 0])), prompt)
    assert prompt[0]["content"] == "You are a pirate.\nSpeak like one."  # input untouched
    # a system message that merely looks odd is not mistaken for a condition
    assert split_condition([{"role": "system", "content": "helpfulness: very"}])[0] is None


def test_condition_renders_where_the_template_puts_the_system_message(tokenizer):
    from hs2trl.data.chat import render

    text = render(tokenizer, condition([{"role": "user", "content": "Hi"}], DEFAULT_INFERENCE_ATTRIBUTES), True)
    assert text.startswith("<|im_start|>system\n"
                           "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2<|im_end|>\n")
    assert "SmolLM" not in text  # the template's default system prompt is replaced
