"""RewardBench 2: best-of-4 with ties at the top and the Ties formula on hand-computed tables, loading and its bad
input, and `hs2 eval-rm --benchmark rewardbench2` end to end with the tiny RM."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hs2trl.rm.rewardbench2 import SUBSETS, best_of_n, load_prompts, subset_scores, ties_score
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import SHARED_DATA, run_hs2, write_jsonl


def test_best_of_n_shares_a_top_tie_among_its_k_responses():
    assert best_of_n(2.0, [1.0, 0.5, -3.0]) == 1.0
    assert best_of_n(2.0, [2.0, 1.0, 0.0]) == 0.5          # 2 at the top, the chosen among them
    assert best_of_n(2.0, [2.0, 2.0, 1.0]) == pytest.approx(1 / 3)
    assert best_of_n(2.0, [2.0, 2.0, 2.0]) == 0.25
    assert best_of_n(1.0, [2.0, 1.0, 1.0]) == 0.0          # tied, but not at the top
    assert best_of_n(1.0, [2.0, 2.0, 0.0]) == 0.0          # a tie at the top without the chosen
    assert best_of_n(3.0, [math.nan, 1.0, 1.0]) == 0.0     # a NaN anywhere scores 0, as the reference's max does
    assert best_of_n(1.0, [0.0]) == 1.0                    # fewer rejected responses: the same rule


def ties_rows() -> list[dict]:
    """Three ref/tied pairs and one tied prompt without its ref. Hand-computed (see the test):
    ref 1: gap 3-2 = 1, accurate | tied 1: spread 5-4 = 1, gap 4-3.5 = 0.5, accurate
    ref 2: gap 1-2 = -1, wrong   | tied 2: spread 6-3 = 3, gap 3-0 = 3, accurate
    ref 3: gap 2-0 = 2, accurate | tied 3: spread 1-1 = 0, gap 1-0 = 1, accurate
                                 | tied 4: gap 1-3 = -2, wrong (no ref 4: in the accuracy only)"""
    table = [("ref:1", [3.0], [1.0, 2.0]), ("tied:1", [5.0, 4.0], [1.0, 3.5]),
             ("ref:2", [1.0], [2.0]), ("tied:2", [6.0, 3.0], [0.0]),
             ("ref:3", [2.0], [0.0]), ("tied:03", [1.0, 1.0], [0.0]),   # '03' is prompt 3, as int() reads it
             ("tied:4", [1.0, 2.0], [3.0])]
    return [{"id": i, "subset": "Ties", "scores_chosen": c, "scores_rejected": r} for i, c, r in table]


def test_ties_score_hand_computed():
    result = ties_score(ties_rows())
    assert result["ref_accuracy"] == pytest.approx(2 / 3)
    assert result["tied_accuracy"] == pytest.approx(3 / 4)
    # pairs 1, 2, 3: gap_tied > spread: 0.5 > 1 no, 3 > 3 no, 1 > 0 yes
    assert result["correctness_preferred"] == pytest.approx(1 / 3)
    # min(gap_ref, gap_tied) > spread: 0.5 > 1 no, -1 > 3 no, 1 > 0 yes
    assert result["correctness_preferred_hard"] == pytest.approx(1 / 3)
    # tanh(min gap / spread - 1): tanh(-0.5), tanh(-4/3), and 1/0 = +inf -> tanh 1
    margin = (math.tanh(-0.5) + math.tanh(-4 / 3) + 1.0) / 3
    assert result["margin_score"] == pytest.approx(margin)
    assert result["score"] == pytest.approx(0.3 * 3 / 4 + 0.3 * 2 / 3 + 0.2 / 3 + 0.2 / 3 + 0.01 * margin)
    assert (result["ref_prompts"], result["tied_prompts"], result["paired_prompts"]) == (3, 4, 3)
    assert result["notes"] == []


def test_ties_score_edges_are_said():
    # 0/0 in the margin term counts 0; a lone kind has accuracy 0 for the other; a one-answer 'tied' prompt is left
    # out of the margin terms.
    zero = ties_score([{"id": "ref:1", "scores_chosen": [1.0], "scores_rejected": [1.0]},
                       {"id": "tied:1", "scores_chosen": [1.0, 1.0], "scores_rejected": [1.0]}])
    assert zero["margin_score"] == 0.0 and zero["correctness_preferred"] == 0.0 and zero["score"] == 0.0
    only_ref = ties_score([{"id": "ref:1", "scores_chosen": [2.0], "scores_rejected": [1.0]}])
    assert only_ref["score"] == pytest.approx(0.3) and only_ref["tied_accuracy"] == 0.0
    assert any("no 'tied' prompts" in n for n in only_ref["notes"])
    assert any("margin terms count 0" in n for n in only_ref["notes"])
    single = ties_score([{"id": "ref:1", "scores_chosen": [2.0], "scores_rejected": [1.0]},
                         {"id": "tied:1", "scores_chosen": [2.0], "scores_rejected": [1.0]}])
    assert single["score"] == pytest.approx(0.6) and any("single correct answer" in n for n in single["notes"])


def test_subset_scores_mean_of_the_six_and_unknown_subsets_reported():
    def row(subset, chosen, rejected, i=0):
        return {"id": i, "subset": subset, "scores_chosen": [chosen], "scores_rejected": rejected}

    table = [row("Math", 2.0, [1.0, 1.0, 1.0]), row("Math", 2.0, [2.0, 1.0, 1.0]), row("Math", 0.0, [1.0, 0, 0]),
             row("Focus", 1.0, [1.0, 1.0, 0.0]), row("Chat", 1.0, [0.0, 0.0, 0.0])] + ties_rows()
    result = subset_scores(table)
    assert result["subsets"]["Math"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["subsets"]["Focus"] == pytest.approx(1 / 3)
    assert result["subsets"]["Ties"] == pytest.approx(ties_score(ties_rows())["score"])
    assert result["overall"] == pytest.approx((0.5 + 1 / 3 + result["subsets"]["Ties"]) / 3)  # Chat not in it
    assert result["unknown_subsets"] == {"Chat": 1} and result["subsets"]["Chat"] == 1.0
    assert result["subset_counts"] == {"Math": 3, "Focus": 1, "Ties": 7, "Chat": 1}
    assert any("3 of 6 subsets" in n and "Factuality" in n for n in result["notes"])
    assert any("Chat (1)" in n and "left out of the mean" in n for n in result["notes"])
    assert result["ties"]["paired_prompts"] == 3


def rb2_rows() -> list[dict]:
    """A small RewardBench 2 file: every subset, a prompt whose four responses are identical (a 4-way tie at the
    top: 1/4), one with the chosen response repeated among the rejected, two Ties ref/tied pairs, a multi-turn
    prompt, a subset name in another spelling and one subset outside RewardBench 2."""
    rows = []
    for i, subset in enumerate(["Factuality", "Factuality", "precise_if", "Math", "Safety", "Focus"]):
        rows.append({"id": str(100 + i), "prompt": f"Question {i}: what is {i} times 3?",
                     "chosen": [f"{i} times 3 is {3 * i}."],
                     "rejected": [f"It is {3 * i + 1}.", f"Maybe {3 * i - 1}?" + " Hm." * i, "I do not know."],
                     "num_correct": 1, "num_incorrect": 3, "total_completions": 4, "subset": subset})
    rows[0]["prompt"] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "What is 0 times 3?"}]
    rows.append({"id": "106", "prompt": "Say yes.", "chosen": ["Yes."], "rejected": ["Yes."] * 3,
                 "subset": "Precise IF"})                                          # 4-way tie at the top
    rows.append({"id": "107", "prompt": "Name a prime.", "chosen": ["7"], "rejected": ["7", "8", "9 is prime."],
                 "subset": "Focus"})                                                # the chosen twice
    for n, (ref_ok, tied_ok) in enumerate([("Red.", ["Blue.", "Green."]), ("Two.", ["Three.", "Five.", "Seven."])]):
        rows.append({"id": f"ref:{n}", "prompt": f"Ties prompt {n}", "chosen": [ref_ok],
                     "rejected": ["Purple dog.", "No idea."], "subset": "Ties", "num_correct": 1})
        rows.append({"id": f"tied:{n}", "prompt": f"Ties prompt {n}, any one", "chosen": tied_ok,
                     "rejected": ["Banana.", "Loud."], "subset": "Ties", "num_correct": len(tied_ok)})
    rows.append({"id": "200", "prompt": "Old benchmark row", "chosen": ["Good."], "rejected": ["Bad.", "Worse."],
                 "subset": "alpacaeval-easy"})
    return rows


def test_load_prompts_reads_lists_and_names(tmp_path):
    prompts = load_prompts(write_jsonl(tmp_path / "rb2.jsonl", rb2_rows()))
    assert [p["id"] for p in prompts] == [r["id"] for r in rb2_rows()]
    assert prompts[2]["subset"] == "Precise IF" and prompts[-1]["subset"] == "alpacaeval-easy"
    assert not prompts[-1]["known"] and all(p["known"] for p in prompts[:-1])
    assert [m["role"] for m in prompts[0]["messages"]] == ["user", "assistant", "user"]
    assert len(prompts[9]["chosen"]) == 2 and len(prompts[11]["chosen"]) == 3


@pytest.mark.parametrize("change, match", [
    (lambda r: r.update(chosen=["a", "b"]), r"row 1: field 'chosen': expected exactly 1 chosen response, got 2"),
    (lambda r: r.update(chosen=[]), r"row 1: field 'chosen': expected exactly 1 chosen response, got 0"),
    (lambda r: r.update(rejected=[]), r"row 1: field 'rejected': expected at least 1 rejected response, got 0"),
    (lambda r: r.pop("rejected"), r"row 1: field 'rejected': missing column"),
    (lambda r: r.update(chosen="a"), r"row 1: field 'chosen': expected a list of responses .* got str"),
    (lambda r: r.update(rejected=["x", " "]), r"row 1: field 'rejected': response 2: empty text"),
    (lambda r: r.update(num_correct=2), r"row 1: field 'num_correct': 2, but the row has 1 chosen responses"),
    (lambda r: r.update(subset="Ties", id="12", chosen=["a", "b"]), r"row 1: field 'id': .*'ref:N' or 'tied:N'"),
    (lambda r: r.update(subset="Ties", id="tied:1", chosen=[]),
     r"row 1: field 'chosen': a Ties row needs at least 1 chosen response, got 0"),
])
def test_bad_rows_are_one_line_naming_file_row_field(tmp_path, change, match):
    row = {"id": "1", "prompt": "p", "chosen": ["a"], "rejected": ["b", "c", "d"], "subset": "Math"}
    change(row)
    with pytest.raises(Hs2Error, match=r"bad\.jsonl: " + match):
        load_prompts(write_jsonl(tmp_path / "bad.jsonl", [row]))


def test_ties_rows_may_have_several_chosen(tmp_path):
    rows = [{"id": "tied:1", "prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d"], "subset": "Ties"}]
    assert len(load_prompts(write_jsonl(tmp_path / "ok.jsonl", rows))[0]["chosen"]) == 3


@pytest.mark.slow
def test_eval_rm_rewardbench2_cli_on_tiny_rm(tiny_rm_dir, tmp_path):
    """The interface: results.json holds each subset's score and the mean, and each subset's score is the rule
    applied to its own per-example rows; the rows' scores are the tiny RM's goodness of each response."""
    from hs2trl.rm.attributes import WEIGHT_PRESETS
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    data = write_jsonl(tmp_path / "rb2.jsonl", rb2_rows())
    out = tmp_path / "eval2"
    # batch size 1: each response alone in its forward pass, so identical responses score exactly the same
    proc = run_hs2("eval-rm", "--benchmark", "rewardbench2", "--model", tiny_rm_dir, "--dataset", data,
                   "--weights", "goodness", "--output-dir", str(out), "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RewardBench 2" in proc.stdout and "Overall" in proc.stdout and "Ties" in proc.stdout
    assert "outside RewardBench 2's six" in proc.stdout and "subsets.png" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    per_example = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]
    assert [r["id"] for r in per_example] == [r["id"] for r in rb2_rows()]      # every row, in input order
    assert (out / "subsets.png").stat().st_size > 1000

    # Each subset's score from its own per-example rows: best-of-4 (1/k at a top tie), Ties by its formula.
    assert set(results["subsets"]) == {*SUBSETS, "alpacaeval-easy"}
    for subset, score in results["subsets"].items():
        rows = [r for r in per_example if r["subset"] == subset]
        if subset == "Ties":
            assert score == pytest.approx(ties_score(rows)["score"])
        else:
            expected = [best_of_n(r["scores_chosen"][0], r["scores_rejected"]) for r in rows]
            assert [r["score"] for r in rows] == expected
            assert score == pytest.approx(sum(expected) / len(expected))
    assert results["overall"] == pytest.approx(sum(results["subsets"][s] for s in SUBSETS) / 6)
    assert results["unknown_subsets"] == {"alpacaeval-easy": 1}
    assert results["subset_counts"]["Precise IF"] == 2 and results["rows"] == len(rb2_rows())
    four_way = per_example[6]
    assert four_way["scores_rejected"] == [four_way["scores_chosen"][0]] * 3 and four_way["score"] == 0.25
    assert results["top_ties"] >= 1

    # The scores are the goodness of the 5-head model (packed batches here), kept with the raw predictions.
    model, tok, _ = load_reward_model(tiny_rm_dir)
    prompts = load_prompts(data)
    conversations = [[*p["messages"], {"role": "assistant", "content": t}] for p in prompts
                     for t in (*p["chosen"], *p["rejected"])]
    goodness = torch.tensor(WEIGHT_PRESETS["goodness"])
    expected = score_conversations(model, tok, conversations) @ goodness
    got = torch.tensor([s for r in per_example for s in (*r["scores_chosen"], *r["scores_rejected"])])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    attrs = torch.tensor([a for r in per_example for a in (*r["chosen_attributes"], *r["rejected_attributes"])])
    torch.testing.assert_close(attrs @ goodness, got, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_eval_rm_rewardbench2_bad_input_exits_2(tmp_path):
    rows = rb2_rows()
    rows[3]["chosen"] = ["one", "two"]
    data = write_jsonl(tmp_path / "rb2_bad.jsonl", rows)
    proc = run_hs2("eval-rm", "--benchmark", "rewardbench2", "--model", "no-such-model", "--dataset", data,
                   "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"hs2: error: {data}: row 4: field 'chosen': expected exactly 1 chosen response, got 2")
    proc = run_hs2("eval-rm", "--benchmark", "rewardbench3", "--model", "m", "--dataset", data)
    assert proc.returncode == 2 and "--benchmark must be rewardbench or rewardbench2" in proc.stderr


@pytest.mark.shared_data
def test_real_rewardbench2_math_rows(tiny_rm_dir, tmp_path):
    from hs2trl.rm.rewardbench2 import evaluate

    path = SHARED_DATA / "rewardbench2_math60.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    prompts = load_prompts(str(path))
    assert len(prompts) == 60 and {p["subset"] for p in prompts} == {"Math"}
    assert all(len(p["chosen"]) == 1 and len(p["rejected"]) == 3 for p in prompts)
    results = evaluate(tiny_rm_dir, str(path), "goodness", str(tmp_path / "out"), batch_size=16, progress=False)
    per_example = [json.loads(line) for line in (tmp_path / "out" / "per_example.jsonl").read_text().splitlines()]
    assert len(per_example) == 60 and results["conversations"] == 240
    assert results["subsets"] == {"Math": pytest.approx(sum(r["score"] for r in per_example) / 60)}
    assert results["overall"] == results["subsets"]["Math"]     # the mean of the one subset present
    assert any("1 of 6 subsets" in n for n in results["notes"])
