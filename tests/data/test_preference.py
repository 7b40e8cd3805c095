"""Preference pairs with a strength (HelpSteer2-Preference, HelpSteer3-Preference, TRL chosen/rejected rows): the
pairs, ties, the swap property, the split column, `ID:DIR` Hub names, `hs2 data to-pairs`, preference `hs2 data stats`
and bad input through the real CLI. Every fixture is hand-made here."""

from __future__ import annotations

import gzip
import json

import pytest

from hs2trl.data.preference import (
    CHOSEN_REJECTED,
    HELPSTEER2,
    HELPSTEER3,
    PreferencePair,
    preference_format,
    preference_pairs,
    trl_row,
)
from hs2trl.data.records import Record
from hs2trl.data.sources import hub_load_args, hub_split, read_records
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import run_hs2, write_jsonl

MULTI_TURN = "Hi there\n<extra_id_1>Assistant\nHello! How can I help?\n<extra_id_1>User\nWhat is {n} + {n}?"
MULTI_TURN_MESSAGES = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is {n} + {n}?"},
]


def helpsteer2_preference_rows() -> list[dict]:
    """One row per strength -3..3 (odd strengths with a multi-turn prompt), all in the train split."""
    rows = []
    for n, strength in enumerate(range(-3, 4)):
        prompt = MULTI_TURN.format(n=n) if strength % 2 else f"What is {n} + {n}?"
        rows.append({"split": "train", "prompt": prompt, "response_1": f"first answer {n}",
                     "response_2": f"second answer {n}", "preference_strength": strength,
                     "preference_statement": "@Response 1 is ...", "three_most_similar_preferences": []})
    return rows


def helpsteer3_preference_rows() -> list[dict]:
    context = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Rain on the roof."},
               {"role": "user", "content": "Another one, about snow."}]
    return [
        {"domain": "general", "language": "english", "context": context, "response1": "Snow falls soft.",
         "response2": "I cannot.", "overall_preference": -2, "individual_preference": []},
        {"domain": "code", "language": "english", "context": [{"role": "user", "content": "Sort [3, 1]."}],
         "response1": "[3, 1]", "response2": "[1, 3]", "overall_preference": 3, "individual_preference": []},
        {"domain": "code", "language": "english", "context": [{"role": "user", "content": "Say hi."}],
         "response1": "hi", "response2": "hello", "overall_preference": 0, "individual_preference": []},
    ]


def records(rows: list[dict], source: str = "pref.jsonl") -> list[Record]:
    return [Record(source, i, row) for i, row in enumerate(rows, start=1)]


def test_helpsteer2_preference_every_strength_and_multi_turn(tmp_path):
    path = write_jsonl(tmp_path / "hs2p.jsonl", helpsteer2_preference_rows())
    rows = read_records(path)
    assert preference_format(rows) == HELPSTEER2
    pairs, stats = preference_pairs(rows)
    assert (stats.rows, stats.pairs, stats.ties_dropped) == (7, 6, 1)
    assert stats.strengths == {s: 1 for s in range(-3, 4)}
    by_n = {int(p.chosen.split()[-1]): p for p in pairs}
    assert set(by_n) == {0, 1, 2, 4, 5, 6}  # n = 3 is strength 0: dropped
    for n, strength in enumerate(range(-3, 4)):
        if strength == 0:
            continue
        pair = by_n[n]
        better, worse = ("first", "second") if strength < 0 else ("second", "first")  # negative: response 1 better
        assert pair.chosen == f"{better} answer {n}" and pair.rejected == f"{worse} answer {n}"
        assert pair.strength == abs(strength) and isinstance(pair.strength, float)
        assert pair.where == f"{path}: row {n + 1}"
        if strength % 2:  # multi-turn prompts become chat turns, without a marker left
            assert pair.prompt == [{**m, "content": m["content"].format(n=n)} for m in MULTI_TURN_MESSAGES]
        else:
            assert pair.prompt == [{"role": "user", "content": f"What is {n} + {n}?"}]


def test_swapping_responses_and_negating_the_strength_gives_the_same_pairs():
    rows = helpsteer2_preference_rows()
    swapped = [{**r, "response_1": r["response_2"], "response_2": r["response_1"],
                "preference_strength": -r["preference_strength"]} for r in rows]
    pairs, stats = preference_pairs(records(rows))
    swapped_pairs, swapped_stats = preference_pairs(records(swapped))
    assert pairs == swapped_pairs  # prompt, chosen, rejected, strength and row, pair by pair
    assert (swapped_stats.pairs, swapped_stats.ties_dropped) == (stats.pairs, stats.ties_dropped)
    assert swapped_stats.strengths == {-s: n for s, n in stats.strengths.items()}


def test_helpsteer3_preference(tmp_path):
    rows = read_records(write_jsonl(tmp_path / "hs3.jsonl", helpsteer3_preference_rows()))
    assert preference_format(rows) == HELPSTEER3
    pairs, stats = preference_pairs(rows)
    assert (stats.rows, stats.pairs, stats.ties_dropped) == (3, 2, 1)
    assert stats.strengths == {-2: 1, 0: 1, 3: 1}
    assert pairs[0].prompt == helpsteer3_preference_rows()[0]["context"]  # the whole conversation, as turns
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].strength) == ("Snow falls soft.", "I cannot.", 2.0)
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].strength) == ("[1, 3]", "[3, 1]", 3.0)


def test_trl_rows_with_and_without_margin():
    user = [{"role": "user", "content": "Capital of France?"}]
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome.", "margin": 2.5},  # plain text
        {"prompt": user, "chosen": [{"role": "assistant", "content": "Paris."}],  # explicit prompt, no margin
         "rejected": [{"role": "assistant", "content": "Lyon."}]},
        {"chosen": [*user, {"role": "assistant", "content": "Paris."}],  # implicit prompt (TRL's other layout)
         "rejected": [*user, {"role": "assistant", "content": "Nice."}], "margin": 0.5},
    ]
    assert preference_format(records(rows)) == CHOSEN_REJECTED
    pairs, stats = preference_pairs(records(rows))
    assert [p.prompt for p in pairs] == [user, user, user]
    assert [(p.chosen, p.rejected, p.strength) for p in pairs] == [
        ("Paris.", "Rome.", 2.5), ("Paris.", "Lyon.", 1.0), ("Paris.", "Nice.", 0.5)]
    assert (stats.pairs, stats.ties_dropped) == (3, 0)
    assert stats.strengths == {1: 2, 3: 1}  # margins rounded up: 0 stays for ties only


def test_not_preference_data_and_empty_data():
    with pytest.raises(Hs2Error, match=r"^x.jsonl: row 1: not preference data: expected HelpSteer2-Preference"):
        preference_pairs(records([{"prompt": "p", "response": "r", "helpfulness": 3}], "x.jsonl"))
    assert preference_format([]) is None
    with pytest.raises(Hs2Error, match="dataset is empty"):
        preference_pairs([])


def test_split_column_picks_the_rows_of_the_split(tmp_path):
    rows = helpsteer2_preference_rows()
    rows[5]["split"] = "validation"
    rows[6]["split"] = "val"  # both spellings are the validation split
    path = write_jsonl(tmp_path / "both.jsonl", rows)
    assert [r.row for r in read_records(path, "train")] == [1, 2, 3, 4, 5]
    assert [r.row for r in read_records(path, "validation")] == [6, 7]  # row numbers of the file kept
    with pytest.raises(Hs2Error, match=r"no rows of split 'test' in column 'split' \(found: train, val, validation\)"):
        read_records(path, "test")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "split"} for r in rows])
    assert len(read_records(plain, "validation")) == 7  # no split column: every row, as before


def test_hub_names_map_to_load_dataset_arguments():
    assert hub_load_args("nvidia/HelpSteer2:preference", "validation") == ("nvidia/HelpSteer2",
                                                                            {"data_dir": "preference"})
    assert hub_load_args("nvidia/HelpSteer2", "validation") == ("nvidia/HelpSteer2", {"split": "validation"})
    assert hub_load_args("nvidia/HelpSteer3", "train") == ("nvidia/HelpSteer3", {"split": "train"})
    for bad in (":preference", "nvidia/HelpSteer2:"):
        with pytest.raises(Hs2Error, match="expected a Hub dataset id with a data directory"):
            hub_load_args(bad, "train")


def test_hub_split_of_a_data_directory():
    from datasets import Dataset, DatasetDict

    one_file = DatasetDict({"train": Dataset.from_list(helpsteer2_preference_rows())})
    assert hub_split(one_file, "validation", "x:preference") == "train"  # then filtered on the split column
    split_files = DatasetDict({"train": Dataset.from_list([{"a": 1}]), "validation": Dataset.from_list([{"a": 2}])})
    assert hub_split(split_files, "validation", "x:dir") == "validation"
    with pytest.raises(Hs2Error, match=r"x:dir: no split 'test' \(it has: train, validation"):
        hub_split(split_files, "test", "x:dir")


def test_data_directory_read_through_datasets_load_dataset(tmp_path, monkeypatch):
    """`ID:DIR` through the real `datasets.load_dataset(ID, data_dir=DIR)`, on a local dataset folder laid out as
    nvidia/HelpSteer2 is (preference/preference.jsonl.gz holding both splits): no network."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = helpsteer2_preference_rows()
    rows[6]["split"] = "validation"
    (tmp_path / "repo" / "preference").mkdir(parents=True)
    with gzip.open(tmp_path / "repo" / "preference" / "preference.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "repo" / "train.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")  # not read
    source = f"{tmp_path / 'repo'}:preference"
    validation = read_records(source, "validation")
    assert [r.row for r in validation] == [7] and validation[0].source == f"{source}[train]"
    pairs, stats = preference_pairs(read_records(source, "train"))
    assert (stats.rows, stats.pairs, stats.ties_dropped) == (6, 5, 1)


def test_trl_row_is_what_reward_trainer_reads(tiny_lm_dir, tmp_path):
    """TRL's stock RewardTrainer tokenizes the rows as they are: prompt turns before each completion, margin kept."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs, _ = preference_pairs(records(helpsteer2_preference_rows()))
    dataset = Dataset.from_list([trl_row(p) for p in pairs])
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to="none", max_steps=1, bf16=False)
    trainer = RewardTrainer(model=tiny_lm_dir, args=args, train_dataset=dataset)
    tokenized = trainer.train_dataset
    assert tokenized["margin"] == [p.strength for p in pairs]
    first = trainer.processing_class.decode(tokenized[0]["chosen_ids"])
    assert "Hi there" in first and "Hello! How can I help?" in first and first.count("<|im_start|>user") == 2
    assert "<extra_id_1>" not in first and pairs[0].chosen in first


def test_to_pairs_and_stats_through_the_cli(tmp_path):
    rows = helpsteer2_preference_rows() + [{**helpsteer2_preference_rows()[0], "split": "validation"}]
    data = write_jsonl(tmp_path / "hs2p.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    proc = run_hs2("data", "to-pairs", "--dataset", data, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"hs2: {out}: 7 rows read (helpsteer2-preference), 6 pairs written, 1 ties dropped" in proc.stdout
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 6 and set(written[0]) == {"prompt", "chosen", "rejected", "margin"}
    assert written[0]["chosen"] == [{"role": "assistant", "content": "first answer 0"}] and written[0]["margin"] == 3
    again, _ = preference_pairs(read_records(str(out)))  # the written pairs read back as chosen/rejected rows
    pairs, _ = preference_pairs(read_records(data))
    assert [(p.prompt, p.chosen, p.rejected, p.strength) for p in again] == [
        (p.prompt, p.chosen, p.rejected, p.strength) for p in pairs]

    proc = run_hs2("data", "stats", "--dataset", data, "--json", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["strengths"] == {str(s): 1 for s in range(-3, 4)}
    assert (stats["format"], stats["rows"], stats["pairs"], stats["ties_dropped"]) == (HELPSTEER2, 7, 6, 1)
    assert stats["mean_strength"] == pytest.approx(2.0)
    proc = run_hs2("data", "stats", "--dataset", data, "--split", "validation", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    assert "much better" in proc.stdout and "1 rows (helpsteer2-preference): 1 pairs, 0 ties dropped" in proc.stdout


def _bad(rows: list[dict], row: int, field: str, value) -> list[dict]:
    rows = [dict(r) for r in rows]
    if value is KeyError:
        del rows[row - 1][field]
    else:
        rows[row - 1][field] = value
    return rows


HS2, HS3 = helpsteer2_preference_rows(), helpsteer3_preference_rows()
TRL = [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
BAD_INPUT = {
    "strength outside -3..3": (_bad(HS2, 2, "preference_strength", 4), 2, "preference_strength", "outside -3..3"),
    "strength not a number": (_bad(HS2, 3, "preference_strength", "high"), 3, "preference_strength",
                              "expected a whole number from -3 to 3, got 'high'"),
    "HelpSteer3 strength not a number": (_bad(HS3, 2, "overall_preference", None), 2, "overall_preference",
                                         "missing preference strength"),
    "missing response": (_bad(HS2, 4, "response_2", KeyError), 4, "response_2", "missing response"),
    "empty response": (_bad(HS3, 1, "response1", "  "), 1, "response1", "empty response"),
    "missing prompt": (_bad(HS2, 5, "prompt", KeyError), 5, "prompt", "missing column"),
    "missing context": (_bad(HS3, 3, "context", KeyError), 3, "context", "missing column"),
    "margin not > 0": (_bad(TRL, 2, "margin", 0), 2, "margin", "must be > 0"),
    "plain text without a prompt": (_bad(TRL, 2, "prompt", KeyError), 2, "prompt", "missing prompt"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_naming_file_row_and_field(case, tmp_path):
    rows, row, field, message = BAD_INPUT[case]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    proc = run_hs2("data", "to-pairs", "--dataset", data, "--output", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"hs2: error: {data}: row {row}: field '{field}': "), proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_pair_contract_is_frozen():
    pair = PreferencePair([{"role": "user", "content": "q"}], "a", "b", 1.0, "f: row 1")
    with pytest.raises(AttributeError):
        pair.strength = 2.0  # type: ignore[misc]
