"""RewardBench: leaderboard section weighting on hand-made tables, loading, and `hs2 eval-rm` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from hs2trl.rm.rewardbench import OFFICIAL_COUNTS, SECTIONS, section_scores, subset_weights
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import SHARED_DATA, run_hs2, write_jsonl


def rows(subset: str, outcomes: str) -> list[dict]:
    """'+' = chosen scored higher, '-' = lower, '=' = a tie."""
    scores = {"+": (1.0, 0.0), "-": (0.0, 1.0), "=": (0.5, 0.5)}
    return [{"subset": subset, "score_chosen": scores[o][0], "score_rejected": scores[o][1]} for o in outcomes]


def test_sections_weight_subsets_by_count_and_math_like_all_code():
    table = (rows("alpacaeval-easy", "+++-") + rows("mt-bench-easy", "+-")            # Chat
             + rows("donotanswer", "==")                                                 # Safety: ties are wrong
             + rows("math-prm", "+-") + rows("hep-cpp", "+") + rows("hep-go", "-")     # Reasoning
             + rows("my-own-subset", "+"))                                               # in no section
    result = section_scores(table)
    assert result["subsets"]["alpacaeval-easy"] == 0.75 and result["subsets"]["donotanswer"] == 0.0
    assert result["sections"]["Chat"] == pytest.approx((0.75 * 4 + 0.5 * 2) / 6)
    assert result["subset_weights"]["math-prm"] == 2  # = the code rows (hep-cpp + hep-go)
    assert result["sections"]["Reasoning"] == pytest.approx((0.5 * 2 + 1.0 * 1 + 0.0 * 1) / 4)
    assert result["sections"]["Safety"] == 0.0
    assert result["sections"]["Chat Hard"] is None
    assert result["overall"] == pytest.approx((4 / 6 + 0.5 + 0.0) / 3)  # mean of the sections present
    assert any("3 of 4 sections" in n and "Chat Hard" in n for n in result["notes"])
    assert result["unsectioned_subsets"] == ["my-own-subset"] and result["subsets"]["my-own-subset"] == 1.0


def test_math_prm_upweighting_changes_reasoning():
    # 4 math rows all right, 2 code subsets of 3 rows all wrong: math weighs 6 (the code total), not 4.
    table = rows("math-prm", "++++") + rows("hep-js", "---") + rows("hep-rust", "---")
    result = section_scores(table)
    assert result["sections"]["Reasoning"] == pytest.approx(6 / 12)  # plain counts would give 4 / 10
    assert result["overall"] == pytest.approx(0.5)
    # On the full split the weight is the leaderboard's constant.
    assert subset_weights(OFFICIAL_COUNTS)["math-prm"] == 984


def test_all_four_sections_overall_is_their_mean():
    table = rows("alpacaeval-hard", "+") + rows("llmbar-natural", "+-") + rows("xstest-should-respond", "-") \
        + rows("hep-python", "++-+")
    result = section_scores(table)
    assert result["sections"] == {"Chat": 1.0, "Chat Hard": 0.5, "Safety": 0.0, "Reasoning": 0.75}
    assert result["overall"] == pytest.approx(2.25 / 4)
    assert not any("sections" in n for n in result["notes"])


def rewardbench_rows() -> list[dict]:
    """A small RewardBench-format file: every section, a duplicated id, a subset outside the sections."""
    out = []
    subsets = ["alpacaeval-easy", "mt-bench-med", "llmbar-natural", "refusals-dangerous", "math-prm", "hep-go",
               "extra-subset"]
    for i in range(14):
        subset = subsets[i % len(subsets)]
        out.append({"prompt": f"Question {i}: what is {i} times 3?", "chosen": f"{i} times 3 is {3 * i}.",
                    "rejected": f"It is {3 * i + 1}, I think." + " Really." * (i % 3), "chosen_model": "a",
                    "rejected_model": "b", "subset": subset, "id": 100 + i})
    out.append(dict(out[3]))  # the same id twice, as in the real split: both rows are kept
    return out


def test_first_per_subset_keeps_input_order():
    from hs2trl.rm.rewardbench import first_per_subset

    pairs = [{"subset": s, "id": i} for i, s in enumerate("aabacbbc")]
    assert [p["id"] for p in first_per_subset(pairs, 2)] == [0, 1, 2, 4, 5, 7]


def test_load_pairs_keeps_every_row_and_validates(tmp_path):
    from hs2trl.rm.rewardbench import load_pairs

    path = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows())
    pairs = load_pairs(path)
    assert [p["id"] for p in pairs] == [100 + i for i in range(14)] + [103]
    assert pairs[0]["chosen"][0] == {"role": "user", "content": "Question 0: what is 0 times 3?"}
    assert pairs[0]["chosen"][-1]["role"] == "assistant" and pairs[0]["rejected"][-1]["content"] == "It is 1, I think."
    bad = rewardbench_rows()[:3]
    del bad[2]["rejected"]
    with pytest.raises(Hs2Error, match=r"rb_bad.jsonl: row 3: field 'rejected': missing column"):
        load_pairs(write_jsonl(tmp_path / "rb_bad.jsonl", bad))
    bad = rewardbench_rows()[:2]
    bad[1]["chosen"] = "  "
    with pytest.raises(Hs2Error, match=r"row 2: field 'chosen': empty text"):
        load_pairs(write_jsonl(tmp_path / "rb_bad2.jsonl", bad))


@pytest.mark.slow
def test_eval_rm_cli_on_tiny_rm(tiny_rm_dir, tmp_path):
    from hs2trl.rm.attributes import WEIGHT_PRESETS
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewardbench import load_pairs
    from hs2trl.rm.scoring import score_conversations

    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows())
    out = tmp_path / "eval"
    proc = run_hs2("eval-rm", "--model", tiny_rm_dir, "--dataset", data, "--weights", "goodness",
                   "--output-dir", str(out), "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Overall" in proc.stdout and "Chat Hard" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(SECTIONS) == set(results["sections"]) and set(results) >= {"subsets", "sections", "overall"}
    per_example = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]
    assert [r["id"] for r in per_example] == [r["id"] for r in rewardbench_rows()]  # every row, in input order
    assert all({"id", "subset", "score_chosen", "score_rejected"} <= set(r) for r in per_example)
    assert (out / "sections.png").stat().st_size > 1000
    # The scores are the goodness of the 5-head model, and the figures follow from the per-example table.
    model, tok, _ = load_reward_model(tiny_rm_dir)
    pairs = load_pairs(data)
    goodness = torch.tensor(WEIGHT_PRESETS["goodness"])
    chosen = score_conversations(model, tok, [p["chosen"] for p in pairs]) @ goodness
    rejected = score_conversations(model, tok, [p["rejected"] for p in pairs]) @ goodness
    torch.testing.assert_close(torch.tensor([r["score_chosen"] for r in per_example]), chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor([r["score_rejected"] for r in per_example]), rejected, atol=1e-5, rtol=0)
    expected = section_scores(per_example)
    assert results["subsets"] == pytest.approx(expected["subsets"])
    assert results["sections"] == pytest.approx(expected["sections"])
    assert results["overall"] == pytest.approx(expected["overall"])
    assert results["subset_counts"]["refusals-dangerous"] == 2 + 1  # rows 4, 11 and the duplicate of row 4
    assert results["unsectioned_subsets"] == ["extra-subset"] and results["rows"] == 15


def test_eval_of_exported_model_matches_weighted_five_heads(tiny_rm_dir, tmp_path):
    from hs2trl.rm.rewardbench import evaluate
    from hs2trl.rm.rewards import export_scalar_model

    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows()[:7])
    export_scalar_model(tiny_rm_dir, "rewardbench-llama3-70b", str(tmp_path / "exported"))
    five = evaluate(tiny_rm_dir, data, None, str(tmp_path / "five"), progress=False)  # default weights
    one = evaluate(str(tmp_path / "exported"), data, None, str(tmp_path / "one"), progress=False)
    assert five["weights_name"] == one["weights_name"] == "rewardbench-llama3-70b"
    a = [json.loads(line) for line in (tmp_path / "five" / "per_example.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "one" / "per_example.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):
        assert x["score_chosen"] == pytest.approx(y["score_chosen"], abs=1e-4)
        assert x["score_rejected"] == pytest.approx(y["score_rejected"], abs=1e-4)
    assert five["subsets"] == one["subsets"]
    # Other weights on a 1-output model are a mistake (it is scored directly).
    with pytest.raises(Hs2Error, match="scored directly"):
        evaluate(str(tmp_path / "exported"), data, "goodness", None, progress=False)


@pytest.mark.shared_data
def test_real_rewardbench_split_loads_whole():
    from hs2trl.rm.rewardbench import load_pairs, section_of

    path = SHARED_DATA / "rewardbench_filtered.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    pairs = load_pairs(str(path))
    assert len(pairs) == 2985
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p["subset"]] = counts.get(p["subset"], 0) + 1
    assert counts == OFFICIAL_COUNTS
    assert all(section_of(s) is not None for s in counts)
    assert sum(1 for p in pairs if p["id"] == 3692) == 2  # the duplicated id is kept, not deduplicated
    assert subset_weights(counts)["math-prm"] == 984
