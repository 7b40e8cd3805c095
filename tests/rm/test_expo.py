"""`hs2 expo` (ExPO, arXiv 2404.16792) through the real CLI: O = B + alpha·(B - A) tensor by tensor, from a sharded
model too, alpha picked by pairwise accuracy on preference pairs, and the bad-input lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fixtures import ATTRS, run_hs2, tiny_llama_config, write_jsonl

pytestmark = pytest.mark.slow

WEIGHTS = "1,0,0,0,0"  # the tiny RM's helpfulness output as the reward


def tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, from all its safetensors files."""
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def extrapolated(a: dict, b: dict, alpha: float) -> dict:
    """The expected result, computed here: B + alpha·(B - A) for float tensors, B's for the rest."""
    return {name: (t + alpha * (t - a[name])) if t.is_floating_point() else t for name, t in b.items()}


def save_rm(model, tokenizer, path: Path, **kwargs) -> str:
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_rm_dir, tokenizer) -> dict[str, str]:
    """A = the tiny RM; B = A with every tensor moved (its helpfulness head shrunk towards A's, so that the
    extrapolation changes which response wins); B also saved in small shards; A and B with an integer buffer."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("expo_models")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
        head = model.score.weight
        head[0] = 0.35 * head[0] + 0.1 * torch.randn(head.shape[1], generator=generator)
    paths = {"A": tiny_rm_dir, "B": save_rm(model, tokenizer, root / "B"),
             "B_sharded": save_rm(model, tokenizer, root / "B_sharded", max_shard_size="1MB")}
    for name, source, counter in (("A_int", tiny_rm_dir, [1, 2, 3]), ("B_int", paths["B"], [7, 8, 9])):
        target = root / name
        shutil.copytree(source, target)
        weights = load_file(target / "model.safetensors")
        weights["counter"] = torch.tensor(counter, dtype=torch.int64)
        save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
        paths[name] = str(target)
    return paths


def test_expo_writes_b_plus_alpha_times_b_minus_a(models, tmp_path):
    out = tmp_path / "expo"
    result = run_hs2("expo", "--base", models["A_int"], "--model", models["B_int"], "--alpha", "0.5",
                     "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b, o = tensors(models["A_int"]), tensors(models["B_int"]), tensors(out)
    expected = extrapolated(a, b, 0.5)
    assert o.keys() == b.keys()
    for name, tensor in o.items():
        assert tensor.dtype == b[name].dtype, name
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
        if name != "counter":
            assert not torch.equal(tensor, b[name]), f"{name}: unchanged, so the test would prove nothing"
    assert o["counter"].tolist() == [7, 8, 9]  # B's integer buffer, unchanged
    assert "floating-point tensors extrapolated, 1 non-float tensors copied" in result.stdout
    assert "Traceback" not in result.stderr
    info = json.loads((out / "expo.json").read_text())
    assert info["alpha"] == 0.5 and info["tensors"]["copied"] == 1 and info["tensors"]["extrapolated"] == len(b) - 1
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / file).is_file(), file
    card = (out / "README.md").read_text()
    assert "ExPO" in card and "α = 0.5" in card


def test_sharded_models_give_the_same_result(models, tmp_path):
    """A sharded B (its index's layout kept) and a sharded A give the tensors of the unsharded run."""
    outs = {name: tmp_path / name for name in ("plain", "sharded_model", "sharded_base")}
    runs = [("plain", models["A"], models["B"]), ("sharded_model", models["A"], models["B_sharded"]),
            ("sharded_base", models["B_sharded"], models["A"])]
    results = run_cli_batch([["expo", "--base", base, "--model", model, "--alpha", "0.5", "--output",
                              str(outs[name])] for name, base, model in runs])
    for proc in results:
        assert proc.returncode == 0, proc.stderr[-3000:]
    plain = tensors(outs["plain"])
    shards = sorted(p.name for p in Path(models["B_sharded"]).glob("*.safetensors"))
    assert len(shards) > 1
    assert sorted(p.name for p in outs["sharded_model"].glob("*.safetensors")) == shards
    index = json.loads((outs["sharded_model"] / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads(
        (Path(models["B_sharded"]) / "model.safetensors.index.json").read_text())["weight_map"]
    sharded = tensors(outs["sharded_model"])
    assert sharded.keys() == plain.keys()
    for name in plain:
        assert torch.equal(sharded[name], plain[name]), name
    # A sharded base, the other way round: B + 0.5·(B - A) with B = the tiny RM
    reverse, a, b = tensors(outs["sharded_base"]), tensors(models["B"]), tensors(models["A"])
    for name, tensor in extrapolated(a, b, 0.5).items():
        torch.testing.assert_close(reverse[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------- --alphas


def conversation_pool() -> list[tuple[str, list[str]]]:
    """Prompts with four responses each: every two responses of a prompt can be a pair."""
    return [(f"What is {i} + {i}?", [f"{i} + {i} = {2 * i}.", f"It is {2 * i + 1}.", f"Let me think: {i * 3}.",
                                      f"The answer is {2 * i}, since doubling {i} gives {2 * i}."]) for i in range(10)]


def rewards_at(models, alpha: float, folder: Path) -> list[list[float]]:
    """The reward (helpfulness output) of every pool response under B + alpha·(B - A), built here and scored with
    the one loader and the one scoring path."""
    from transformers import AutoModelForSequenceClassification

    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations
    from hs2trl.runtime.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(models["B"])
    model.load_state_dict(extrapolated(tensors(models["A"]), tensors(models["B"]), alpha))
    save_rm(model, load_tokenizer(models["B"]), folder)
    rm, tokenizer, _ = load_reward_model(str(folder))
    pool = conversation_pool()
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                     for p, responses in pool for r in responses]
    scores = score_conversations(rm, tokenizer, conversations)[:, 0].tolist()
    return [scores[4 * i: 4 * i + 4] for i in range(len(pool))]


def test_alphas_keeps_the_alpha_with_the_best_pairwise_accuracy(models, tmp_path):
    """Pairs labelled by what B + 0.5·(B - A) prefers: alpha 0.5 gets every pair right, alpha 0 (B) and alpha 1 get
    some wrong; the table must report the accuracies computed here, and O must be the alpha-0.5 model."""
    margins = {}  # alpha -> {(prompt, i, j): reward_i - reward_j}
    for alpha in (0.0, 0.5, 1.0):
        rewards = rewards_at(models, alpha, tmp_path / f"direct-{alpha}")
        margins[alpha] = {(p, i, j): rs[i] - rs[j] for p, rs in enumerate(rewards)
                          for i in range(4) for j in range(i + 1, 4)}
    pairs = [k for k in margins[0.5] if min(abs(m[k]) for m in margins.values()) > 1e-4]  # no near-ties
    disagree = {alpha: sum((margins[alpha][k] > 0) != (margins[0.5][k] > 0) for k in pairs) for alpha in (0.0, 1.0)}
    assert disagree[0.0] and disagree[1.0], f"the fixture models do not separate the alphas: {disagree}"
    pool = conversation_pool()
    rows = []
    for n, (p, i, j) in enumerate(pairs):
        first_better = margins[0.5][(p, i, j)] > 0
        strength = (-1 if first_better else 1) * (1 + n % 3)  # negative: response 1 is better
        rows.append({"prompt": pool[p][0], "response_1": pool[p][1][i], "response_2": pool[p][1][j],
                     "preference_strength": strength})
    rows.append({"prompt": pool[0][0], "response_1": "4", "response_2": "four", "preference_strength": 0})  # a tie
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)

    out = tmp_path / "expo"
    result = run_hs2("expo", "--base", models["A"], "--model", models["B"], "--alphas", "1,0.5", "--eval-dataset",
                     data, "--weights", WEIGHTS, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "expo.json").read_text())
    table = {row["alpha"]: row for row in info["table"]}
    assert list(table) == [0.0, 1.0, 0.5]
    assert table[0.5]["accuracy"] == 1.0 and table[0.5]["kept"] and info["alpha"] == 0.5
    for alpha in (0.0, 1.0):
        assert table[alpha]["correct"] == len(pairs) - disagree[alpha] and not table[alpha]["kept"]
        assert table[alpha]["accuracy"] == pytest.approx((len(pairs) - disagree[alpha]) / len(pairs))
    assert info["pair_stats"]["ties_dropped"] == 1 and table[0.0]["pairs"] == len(pairs)
    assert "kept" in result.stdout and "accuracy" in result.stdout  # the printed table
    expected = extrapolated(tensors(models["A"]), tensors(models["B"]), 0.5)
    kept = tensors(out)
    for name, tensor in expected.items():
        torch.testing.assert_close(kept[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert not list(out.glob("alpha-*")), "a candidate folder was left behind"


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(models, tmp_path, tokenizer):
    from transformers import LlamaForSequenceClassification

    from hs2trl.rm.modeling import reward_config_kwargs

    one_output = save_rm(LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)), tokenizer,
                         tmp_path / "one_output")
    deeper = save_rm(LlamaForSequenceClassification(tiny_llama_config(
        tokenizer, num_hidden_layers=3, **reward_config_kwargs(ATTRS))), tokenizer, tmp_path / "deeper")
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello\n")
    a, b = models["A"], models["B"]
    cases = [
        (["--base", a, "--model", one_output, "--alpha", "0.5"], "tensor 'score.weight' has shape [5, 32] in --base"),
        (["--base", a, "--model", deeper, "--alpha", "0.5"], "tensor 'model.layers.2."),
        (["--base", str(not_a_model), "--model", b, "--alpha", "0.5"], "not a model folder (no config.json)"),
        (["--base", a, "--model", b, "--alpha", "half"], "--alpha: 'half' is not a number"),
        (["--base", a, "--model", b, "--alphas", "0.1,x", "--eval-dataset", "p.jsonl"], "'x' is not a number"),
        (["--base", a, "--model", b, "--alphas", "0.1,0.3"], "--alphas needs --eval-dataset"),
    ]
    outputs = [tmp_path / f"out{n}" for n in range(len(cases))]
    results = run_cli_batch([["expo", *args, "--output", str(o)] for (args, _), o in zip(cases, outputs)])
    for (args, expected), proc, out in zip(cases, results, outputs):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("hs2: error: expo") and expected in lines[0], (args, lines)
        assert not out.exists(), f"{args}: wrote an output"


def test_an_existing_model_is_kept_unless_overwrite_and_an_interrupted_run_starts_again(models, tmp_path):
    from hs2trl.rm.expo import RUNNING_FILE

    existing, again, interrupted = tmp_path / "existing", tmp_path / "again", tmp_path / "interrupted"
    for folder in (existing, again):
        shutil.copytree(models["B_sharded"], folder)
    interrupted.mkdir()
    (interrupted / RUNNING_FILE).touch()
    (interrupted / "alpha-0.3").mkdir()
    (interrupted / "alpha-0.3" / "model.safetensors").write_bytes(b"torn")
    (interrupted / "model-00009-of-00009.safetensors").write_bytes(b"stale")
    expo = ["expo", "--base", models["A"], "--model", models["B"], "--alpha", "0.5", "--output"]
    refused, overwritten, restarted = run_cli_batch([[*expo, str(existing)], [*expo, str(again), "--overwrite"],
                                                     [*expo, str(interrupted)]])
    assert refused.returncode == 2 and "already holds a model; choose another folder or pass --overwrite" in (
        refused.stderr), refused.stderr[-2000:]
    assert len(list(existing.glob("*.safetensors"))) > 1 and not (existing / "expo.json").exists()  # untouched
    assert overwritten.returncode == 0, overwritten.stderr[-2000:]
    assert sorted(p.name for p in again.glob("*.safetensors")) == ["model.safetensors"]  # B's old shards gone
    assert restarted.returncode == 0 and "stopped before it finished; starting again" in restarted.stdout, (
        restarted.stderr[-2000:])
    assert sorted(p.name for p in interrupted.iterdir() if p.name.endswith(".safetensors") or p.is_dir()) == [
        "model.safetensors"] and not (interrupted / RUNNING_FILE).exists()
    expected = extrapolated(tensors(models["A"]), tensors(models["B"]), 0.5)
    for folder in (again, interrupted):
        result = tensors(folder)
        for name, tensor in expected.items():
            torch.testing.assert_close(result[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
