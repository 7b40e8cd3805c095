"""HelpSteer2 rows: reading, validation, multi-turn prompts as chat messages, the token the head reads."""

import gzip
import json
import math

import pytest

from hs2trl.data.chat import encode_conversation, end_of_turn_id
from hs2trl.data.helpsteer2 import (
    attribute_scores,
    conversation,
    detect_format,
    messages_to_prompt,
    prompt_to_messages,
    regression_examples,
)
from hs2trl.data.records import Record
from hs2trl.data.sources import read_records
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import ATTRS, SHARED_DATA, helpsteer_rows, write_jsonl

MULTI_TURN = "Hi there\n<extra_id_1>Assistant\nHello! How can I help?\n<extra_id_1>User\nWhat is 2 + 2?"


def test_multi_turn_prompt_becomes_chat_messages():
    assert prompt_to_messages(MULTI_TURN) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    assert prompt_to_messages("just one turn") == [{"role": "user", "content": "just one turn"}]
    assert messages_to_prompt(prompt_to_messages(MULTI_TURN)) == MULTI_TURN


def test_multi_turn_markers_never_reach_the_model(tokenizer):
    record = Record("f.jsonl", 1, {"prompt": MULTI_TURN, "response": "4", **dict.fromkeys(ATTRS, 3)})
    text = tokenizer.decode(encode_conversation(tokenizer, conversation(record)))
    assert "<extra_id_1>" not in text
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2


def test_sequences_end_on_the_end_of_turn_token(tokenizer):
    ids = encode_conversation(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert ids[-1] == end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id != ids[-1]  # the pad token never hides the token the head reads


def test_missing_attribute_is_masked_not_invented():
    record = Record("f.jsonl", 3, {"prompt": "p", "response": "r", "helpfulness": 2, "correctness": None})
    assert attribute_scores(record) == [2.0, None, None, None, None]
    [example] = regression_examples([record])
    assert example["labels"][0] == 2.0 and all(math.isnan(v) for v in example["labels"][1:])


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "p", "response": "r", "helpfulness": 5}, "helpfulness", "outside 0-4"),
        ({"prompt": "p", "response": "r", "helpfulness": float("nan")}, "helpfulness", "outside 0-4"),
        ({"prompt": "p", "response": "r", "helpfulness": "high"}, "helpfulness", "expected a number"),
        ({"prompt": "p", "response": " ", "helpfulness": 1}, "response", "empty response"),
        ({"prompt": "", "response": "r", "helpfulness": 1}, "prompt", "empty prompt"),
        ({"prompt": "p", "helpfulness": 1}, "response", "missing column"),
        ({"prompt": "p", "response": "r"}, "helpfulness", "no attribute scores"),
    ],
)
def test_bad_rows_name_file_row_and_field(row, field, message):
    with pytest.raises(Hs2Error) as err:
        regression_examples([Record("data.jsonl", 7, row)])
    assert str(err.value).startswith(f"data.jsonl: row 7: field '{field}'") and message in str(err.value)


def test_read_jsonl_gz_and_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = helpsteer_rows(3)
    plain = write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for source in (plain, str(tmp_path / "a.jsonl.gz"), str(tmp_path / "a.parquet")):
        records = read_records(source)
        assert [r.data for r in records] == rows and [r.row for r in records] == list(range(1, 7))


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(helpsteer_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(Hs2Error, match=r"bad.jsonl: row 2: malformed JSON"):
        read_records(str(path))


def test_format_detection():
    assert detect_format([Record("f", 1, {"chosen": "a", "rejected": "b"})]) == "preference"
    assert detect_format([Record("f", 1, helpsteer_rows(1)[0])]) == "regression"


def test_demo_dataset_is_valid_and_disjoint():
    train = regression_examples(read_records("demo:helpsteer2", "train"))
    validation = regression_examples(read_records("demo:helpsteer2", "validation"))
    assert len(train) > 200 and len(validation) >= 40
    prompts = lambda xs: {json.dumps(x["messages"][:-1]) for x in xs}  # noqa: E731
    assert not prompts(train) & prompts(validation)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "helpsteer2_sample100.jsonl").exists(), reason="../shared/data absent")
def test_real_helpsteer2_rows_validate():
    records = read_records(str(SHARED_DATA / "helpsteer2_sample100.jsonl"))
    examples = regression_examples(records)
    assert len(examples) == 100
    assert all("<extra_id_1>" not in m["content"] for e in examples for m in e["messages"])
