"""Alignment data: HelpSteer2 -> DPO pairs, conversations (Daring Anteater, ShareGPT, OpenAssistant trees), prompts."""

from __future__ import annotations

import json

import pytest

from hs2trl.data.conversations import distinct_prompts, oasst_threads, prompt_of, sft_examples
from hs2trl.data.pairs import best_worst_pair, dpo_rows, helpsteer2_pairs, preference_rows
from hs2trl.data.records import Record
from hs2trl.data.sources import read_records
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import SHARED_DATA, helpsteer_rows, run_hs2, write_jsonl


def records(rows, source="f.jsonl"):
    return [Record(source, i, row) for i, row in enumerate(rows, start=1)]


def hs_row(prompt, response, helpfulness, **scores):
    return {"prompt": prompt, "response": response, "helpfulness": helpfulness, "correctness": 2, "coherence": 3,
            "complexity": 1, "verbosity": 1, **scores}


# ------------------------------------------------------------------ HelpSteer2 -> pairs


def test_pairs_higher_helpfulness_is_chosen_and_ties_are_dropped():
    multi = "Hi!\n<extra_id_1>Assistant\nHello, how can I help?\n<extra_id_1>User\nWhat is 2 + 2?"
    rows = [
        hs_row("Name a colour.", "Blue.", 2), hs_row("Name a colour.", "Blue is a colour of the sky.", 4),
        hs_row("Tie?", "A", 3), hs_row("Tie?", "B", 3),
        hs_row(multi, "4", 4), hs_row(multi, "5", 0),
    ]
    stats = helpsteer2_pairs(records(rows))
    assert (len(stats.pairs), stats.ties, stats.prompts) == (2, 1, 3)
    first, second = stats.pairs
    assert first["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert first["chosen"] == [{"role": "assistant", "content": "Blue is a colour of the sky."}]  # row 2 had 4 > 2
    assert first["rejected"] == [{"role": "assistant", "content": "Blue."}]
    assert (first["score_chosen"], first["score_rejected"]) == (4, 2)
    # the multi-turn prompt keeps its turns as chat messages, no raw markers
    assert [m["role"] for m in second["prompt"]] == ["user", "assistant", "user"]
    assert second["prompt"][2]["content"] == "What is 2 + 2?"
    assert not any("<extra_id_1>" in m["content"] for m in second["prompt"])
    assert second["chosen"][0]["content"] == "4"
    assert stats.summary() == "2 pairs kept, 1 ties dropped (equal helpfulness) out of 3 prompts"


def test_pairs_bad_pairing_names_both_rows():
    rows = helpsteer_rows(3)
    rows[3]["prompt"] = "A different prompt"  # rows 3 and 4 (1-based) no longer share a prompt
    with pytest.raises(Hs2Error) as err:
        helpsteer2_pairs(records(rows, "data.jsonl"))
    assert str(err.value).startswith("data.jsonl: rows 3 and 4: field 'prompt': ")


def test_pairs_odd_row_count_names_the_last_row():
    with pytest.raises(Hs2Error, match=r"^f.jsonl: row 5: odd number of rows"):
        helpsteer2_pairs(records(helpsteer_rows(3)[:5]))


def test_pairs_missing_helpfulness_is_an_error():
    rows = helpsteer_rows(1)
    del rows[1]["helpfulness"]
    with pytest.raises(Hs2Error, match=r"row 2: field 'helpfulness'"):
        helpsteer2_pairs(records(rows))


@pytest.mark.shared_data
def test_pairs_on_the_shared_helpsteer2_sample():
    path = SHARED_DATA / "helpsteer2_sample100.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    expected_pairs = sum(a["helpfulness"] != b["helpfulness"] for a, b in zip(rows[0::2], rows[1::2]))
    stats = helpsteer2_pairs(read_records(str(path)))
    assert (len(stats.pairs), stats.ties) == (expected_pairs, len(rows) // 2 - expected_pairs) == (29, 21)
    for pair, (a, b) in zip(stats.pairs, [(a, b) for a, b in zip(rows[0::2], rows[1::2])
                                          if a["helpfulness"] != b["helpfulness"]]):
        hi = a if a["helpfulness"] > b["helpfulness"] else b
        assert pair["chosen"][0]["content"] == hi["response"]


def test_preference_rows_and_dpo_rows():
    rows = [{"prompt": "Q?\n<extra_id_1>Assistant\nA\n<extra_id_1>User\nQ2?",
             "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]}]
    (row,) = preference_rows(records(rows))
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    text_rows, stats = dpo_rows(records([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert text_rows == [{"prompt": "p", "chosen": "a", "rejected": "b"}] and stats is None
    with pytest.raises(Hs2Error, match=r"row 1: field 'rejected': missing column"):
        preference_rows(records([{"prompt": "p", "chosen": "a"}]))
    pairs, stats = dpo_rows(records(helpsteer_rows(2)))
    assert len(pairs) == 2 and set(pairs[0]) == {"prompt", "chosen", "rejected"} and stats.ties == 0


def test_best_worst_pair():
    prompt = [{"role": "user", "content": "q"}]
    pair = best_worst_pair(prompt, ["a", "b", "c"], [0.1, 0.9, -0.5])
    assert pair["chosen"][0]["content"] == "b" and pair["rejected"][0]["content"] == "c"
    assert best_worst_pair(prompt, ["a", "b"], [0.3, 0.3]) is None


# ------------------------------------------------------------------ conversations and prompts


DARING_ANTEATER_ROW = {
    "system": "You are a helpful assistant.", "mask": "User", "dataset": "x",
    "conversations": [
        {"from": "User", "value": "Hi", "label": None},
        {"from": "Assistant", "value": "Hello!", "label": "helpfulness:4"},
        {"from": "User", "value": "2+2?", "label": None},
        {"from": "Assistant", "value": "4", "label": "helpfulness:4"},
    ],
}


def test_daring_anteater_and_sharegpt_rows_become_messages():
    (example,), note = sft_examples(records([DARING_ANTEATER_ROW]))
    assert note is None
    assert example["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]
    no_system = {**DARING_ANTEATER_ROW, "system": ""}
    assert sft_examples(records([no_system]))[0][0]["messages"][0]["role"] == "user"
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert sft_examples(records([sharegpt]))[0][0]["messages"] == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    # HelpSteer2 rows: prompt (multi-turn expanded) + response
    assert [m["role"] for m in sft_examples(records(helpsteer_rows(2)))[0][2]["messages"]] == \
        ["user", "assistant", "user", "assistant"]


def test_conversation_errors_name_the_row():
    bad_speaker = {"conversations": [{"from": "Narrator", "value": "x"}]}
    with pytest.raises(Hs2Error, match=r"row 1: field 'conversations': turn 0: unknown speaker 'Narrator'"):
        sft_examples(records([bad_speaker]))
    ends_on_user = {"conversations": [{"from": "User", "value": "q"}]}
    with pytest.raises(Hs2Error, match=r"row 2: the conversation must end on a non-empty assistant turn"):
        sft_examples(records([DARING_ANTEATER_ROW, ends_on_user]))
    with pytest.raises(Hs2Error, match=r"row 1: no conversation in this row"):
        sft_examples(records([{"text": "plain"}]))


def test_openassistant_trees_become_threads():
    def msg(mid, parent, role, text, **extra):
        return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "message_tree_id": "t", **extra}

    rows = [
        msg("r", None, "prompter", "Q"),
        msg("a1", "r", "assistant", "A1"), msg("a2", "r", "assistant", "A2"),
        msg("p2", "a1", "prompter", "Follow-up"), msg("a3", "p2", "assistant", "A3"),
        msg("p3", "a2", "prompter", "Unanswered"),           # cut back to ... A2
        msg("a4", "r", "assistant", "Spam", deleted=True),  # skipped
        msg("a5", "a4", "prompter", "under deleted"),        # skipped with its parent
    ]
    threads = oasst_threads(records(rows))
    assert threads.conversations == [
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Follow-up"}, {"role": "assistant", "content": "A3"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A2"}],
    ]
    assert (threads.messages, threads.skipped) == (8, 2)
    examples, note = sft_examples(records(rows))
    assert len(examples) == 2 and "8 messages -> 2 conversations" in note


def test_prompts_are_distinct_and_end_on_a_user_turn():
    prompts, repeats = distinct_prompts(records(helpsteer_rows(8)))
    assert (len(prompts), repeats) == (8, 8)
    assert [m["role"] for m in prompts[1]] == ["user", "assistant", "user"]
    # Daring Anteater: the conversation without its final answer (system kept)
    assert [m["role"] for m in prompt_of(records([DARING_ANTEATER_ROW])[0])] == ["system", "user", "assistant", "user"]
    with pytest.raises(Hs2Error, match="no prompt"):
        prompt_of(records([{"messages": [{"role": "assistant", "content": "x"}]}])[0])


# ------------------------------------------------------------------ the CLI


@pytest.mark.slow
def test_cli_to_dpo(tmp_path):
    rows = helpsteer_rows(4)
    rows[3]["helpfulness"] = rows[2]["helpfulness"]  # prompt 2 becomes a tie
    src = write_jsonl(tmp_path / "hs.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    result = run_hs2("data", "to-dpo", "--dataset", src, "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "3 pairs kept, 1 ties dropped" in result.stdout
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 3 and all(set(p) >= {"prompt", "chosen", "rejected"} for p in pairs)
    assert all(isinstance(p[k], list) and p[k][0]["role"] for p in pairs for k in ("prompt", "chosen", "rejected"))

    rows[5]["prompt"] = "moved"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = run_hs2("data", "to-dpo", "--dataset", bad, "--output", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hs2: error: {bad}: rows 5 and 6: field 'prompt': consecutive rows must share a prompt (HelpSteer2 pairs are "
        "rows 2k and 2k+1); the file is out of order or a row is missing"]
