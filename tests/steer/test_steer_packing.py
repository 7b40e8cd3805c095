"""SteerLM 2.0 without padding: the packed and shared-prompt layouts give the padded layout's log-probs, loss,
gradients and training step (fp32), and the LM head runs only where a response token is predicted."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.fixtures import tiny_llama_config

pytestmark = pytest.mark.trl_internals  # also run on TRL 1.12 by make test-trl112

ATTRIBUTES = {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2}
LAYOUTS = ("padded", "packed", "shared_prompt")


def _groups(seed=0):
    """Two prompts of different lengths, three responses each (one a single token)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(10, 1000, (n,), generator=g).tolist()

    return [(ids(7), [ids(5), ids(1), ids(9)]), (ids(3), [ids(4), ids(2), ids(6)])]


def _tiny_lm(tokenizer, attn="sdpa"):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny_llama_config(tokenizer)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def _one_by_one(model, groups):
    """Each prompt + response alone, full logits, no padding, no packing."""
    out = []
    for prompt, responses in groups:
        for response in responses:
            ids = torch.tensor([prompt + response])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            out.append(logps[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layouts_give_the_same_log_probs_and_gradients(tokenizer, attn):
    from hs2trl.packing import packed_attention
    from hs2trl.steer.groups import collate_groups
    from hs2trl.steer.objective import batch_response_logps, steerlm2_loss

    model = _tiny_lm(tokenizer, attn)
    groups = _groups()
    with torch.no_grad():
        expected = _one_by_one(model, groups)
    steerlm = expected.view(2, 3) + torch.tensor([0.5, -0.2, 0.1])  # b' not uniform: the loss has a gradient
    log_weights = torch.tensor([[0.0, -1.0, -3.0], [-2.0, 0.0, -0.5]])
    results = {}
    for layout in LAYOUTS:
        model.zero_grad()
        batch = collate_groups(groups, layout, tokenizer.pad_token_id)
        with packed_attention(model, shared_prefix=layout == "shared_prompt") as ok:
            assert ok
            logps = batch_response_logps(model, batch)
        loss, kl = steerlm2_loss(logps.view(2, 3), steerlm, log_weights)
        loss.backward()
        results[layout] = (logps.detach(), loss.detach(), kl, [p.grad.clone() for p in model.parameters()])
        assert int(batch["sequence_tokens"]) == sum(len(p) + len(r) for p, rs in groups for r in rs)
    assert model.config._attn_implementation == attn  # restored after each block
    torch.testing.assert_close(results["padded"][0], expected, atol=1e-5, rtol=1e-5)
    for layout in ("packed", "shared_prompt"):
        logps, loss, kl, grads = results[layout]
        torch.testing.assert_close(logps, results["padded"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, results["padded"][1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kl, results["padded"][2], atol=1e-6, rtol=1e-5)
        for got, want in zip(grads, results["padded"][3]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_shared_prompt_row_holds_each_prompt_once_and_the_head_reads_only_response_predictions(tokenizer):
    from hs2trl.packing import packed_attention
    from hs2trl.steer.groups import collate_groups
    from hs2trl.steer.objective import batch_response_logps

    model = _tiny_lm(tokenizer).eval()
    groups = _groups()
    response_tokens = sum(len(r) for _, rs in groups for r in rs)
    packed = collate_groups(groups, "packed")
    shared = collate_groups(groups, "shared_prompt")
    assert packed["input_ids"].shape[1] == sum(len(p) * len(rs) for p, rs in groups) + response_tokens
    assert shared["input_ids"].shape[1] == sum(len(p) for p, _ in groups) + response_tokens
    # the first response of the first prompt: positions go on from the prompt, its tokens follow the prompt
    prompt, responses = groups[0]
    assert shared["position_ids"][0, : len(prompt) + 5].tolist() == list(range(len(prompt) + 5))
    second = len(prompt) + len(responses[0]) + len(responses[1])  # the third response starts here
    assert shared["position_ids"][0, second : second + 3].tolist() == [len(prompt), len(prompt) + 1, len(prompt) + 2]
    assert shared["input_ids"][0, second : second + 9].tolist() == responses[2]
    # every response's first token is predicted from the prompt's last position
    firsts = [0, 5, 6]
    assert shared["logits_index"][firsts].tolist() == [len(prompt) - 1] * 3
    shapes = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad(), packed_attention(model, shared_prefix=True):
        batch_response_logps(model, shared)
    handle.remove()
    assert shapes == [(1, response_tokens, model.config.vocab_size)]  # no logits over prompt positions


def test_shared_prefix_attention_kernels_agree():
    """The CPU per-segment path and the GPU fallback (re-padded, bottom-right causal mask) agree on a shared-prefix
    row, and a response's output equals attention over its own prompt + response alone."""
    from hs2trl.packing import _per_sequence_attention, _repadded_attention, pack_shared_prefix

    torch.manual_seed(0)
    groups = [(torch.arange(4), [torch.arange(3), torch.arange(1)]), (torch.arange(2), [torch.arange(5)])]
    row = pack_shared_prefix(groups)
    n = row["input_ids"].shape[1]
    assert n == 4 + 3 + 1 + 2 + 5 and row["key_index"].tolist()[:11] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]
    q, k, v = torch.randn(1, 4, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    index = row["key_index"]
    kg, vg = k.index_select(2, index), v.index_select(2, index)
    a = _per_sequence_attention(q, kg, vg, row["cu_seq_lens_q"], None, 0.0, 2, row["cu_seq_lens_k"])
    b = _repadded_attention(q, kg, vg, row["cu_seq_lens_q"], row["max_length_q"], None, 0.0, 2,
                            row["cu_seq_lens_k"], row["max_length_k"])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # response 1 of prompt 1 (row positions 4..6) alone: causal over [prompt 0..3, itself 4..6]
    own = [0, 1, 2, 3, 4, 5, 6]
    alone = torch.nn.functional.scaled_dot_product_attention(q[:, :, own], k[:, :, own], v[:, :, own], is_causal=True,
                                                             enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(a[:, 4:7], alone[:, 4:7], atol=1e-6, rtol=1e-5)


def _steerlm2_rows():
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]]
    responses = [["The capital of France is Paris.", "London.", "I do not know, maybe Berlin or Rome?"],
                 ["Blue.", "Green, like grass in spring.", "Red"]]
    return [{"prompt": p, "attributes": ATTRIBUTES, "responses": r, "steerlm_logps": [-20.0, -9.0, -31.0],
             "sft_logps": [-18.0, -10.0, -30.0], "attribute_logps": [-1.0, -4.0, -2.5]}
            for p, r in zip(prompts, responses)]


def test_one_training_step_is_the_same_in_every_layout(tiny_lm_dir, tokenizer, tmp_path):
    """A real SteerLM2Trainer step (SGD, so the update is the gradient itself) from the same weights."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from hs2trl.trainers.steerlm2_config import SteerLM2Config
    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    results = {}
    for padding_free, shared in ((False, False), (True, False), (True, True)):
        args = SteerLM2Config(output_dir=str(tmp_path / f"{padding_free}{shared}"), per_device_train_batch_size=2,
                              max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
                              logging_steps=1, report_to="none", save_strategy="no", bf16=False, use_cpu=True, seed=0,
                              padding_free=padding_free, shared_prompt=shared, disable_tqdm=True)
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        trainer = SteerLM2Trainer(model=model, args=args, train_dataset=Dataset.from_list(_steerlm2_rows()),
                                  processing_class=tokenizer)
        trainer.train()
        log = next(entry for entry in trainer.state.log_history if "kl" in entry)
        results[trainer.layout] = (log, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert set(results) == set(LAYOUTS)
    padded_log, padded_weights = results["padded"]
    for layout in ("packed", "shared_prompt"):
        log, weights = results[layout]
        assert log["loss"] == pytest.approx(padded_log["loss"], rel=1e-5, abs=1e-6)
        assert log["kl"] == pytest.approx(padded_log["kl"], rel=1e-5, abs=1e-7)
        assert log["num_tokens"] == padded_log["num_tokens"]  # the same sequences counted, whatever the layout
        moved = max(float((weights[k] - padded_weights[k]).abs().max()) for k in weights)
        assert moved < 1e-5, f"{layout}: weights differ from the padded step by {moved}"
    # the step did move the weights
    initial = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict()
    assert max(float((padded_weights[k] - initial[k]).abs().max()) for k in initial) > 1e-4


def test_attention_that_cannot_pack_falls_back_to_padding(tiny_lm_dir, tokenizer, tmp_path, capsys):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from hs2trl.trainers.steerlm2_config import SteerLM2Config
    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    model.config._attn_implementation = "flex_attention"  # not one the packed rows can switch from
    args = SteerLM2Config(output_dir=str(tmp_path / "o"), report_to="none", bf16=False, use_cpu=True)
    trainer = SteerLM2Trainer(model=model, args=args, train_dataset=Dataset.from_list(_steerlm2_rows()),
                              processing_class=tokenizer)
    assert trainer.layout == "padded"
    assert "cannot separate packed sequences; training with padded batches" in capsys.readouterr().out
