"""`hs2 annotate`: every row kept in order with its columns, predictions = the scorer's, labels = SteerLM's rule,
input formats, resume (append-and-skip), two processes, parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import ATTRS, helpsteer_rows, run_hs2, write_jsonl


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def expected_predictions(rm_dir: str, rows: list[dict]) -> torch.Tensor:
    from hs2trl.data.helpsteer2 import conversation
    from hs2trl.data.records import Record
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    model, tok, _ = load_reward_model(rm_dir)
    return score_conversations(model, tok, [conversation(Record("x", i, r)) for i, r in enumerate(rows, 1)])


def check_annotated(out: list[dict], rows: list[dict], predictions: torch.Tensor) -> None:
    assert len(out) == len(rows)
    for got, row, pred in zip(out, rows, predictions.tolist()):
        assert {k: got[k] for k in row} == row  # every input column unchanged, rows in input order
        for j, name in enumerate(ATTRS):
            assert got[f"pred_{name}"] == pytest.approx(pred[j], abs=1e-5)
            assert got[f"label_{name}"] == int(round(min(max(pred[j], 0.0), 4.0)))


@pytest.mark.slow
def test_annotate_keeps_rows_in_order_and_resumes(tiny_rm_dir, tmp_path):
    rows = helpsteer_rows()
    data = write_jsonl(tmp_path / "hs.jsonl", rows)
    out = tmp_path / "annotated.jsonl"
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--weights",
                   "goodness", "--chunk_size", "5", "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = read(out)
    predictions = expected_predictions(tiny_rm_dir, rows)
    check_annotated(full, rows, predictions)
    goodness = predictions @ torch.tensor([0.65, 0.8, 0.45, 0.0, 0.0])
    assert [r["reward"] for r in full] == pytest.approx(goodness.tolist(), abs=1e-5)

    # A run killed after 6 rows, mid-line: the rerun appends the rest and skips what is done.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:6]) + lines[6][:40])
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--weights",
                   "goodness", "--chunk_size", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming: 6 of 16 rows" in proc.stdout
    resumed = read(out)
    assert [r["response"] for r in resumed] == [r["response"] for r in full]
    assert [r["pred_helpfulness"] for r in resumed] == pytest.approx([r["pred_helpfulness"] for r in full], abs=1e-6)

    # Complete: a third run changes nothing.
    before = out.read_text()
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out),
                   "--weights", "goodness")
    assert proc.returncode == 0 and "already complete" in proc.stdout and out.read_text() == before


@pytest.mark.slow
def test_annotate_two_processes_parquet_and_stale_parts(tiny_rm_dir, tmp_path):
    import pyarrow.parquet as pq

    rows = helpsteer_rows()
    data = write_jsonl(tmp_path / "hs.jsonl", rows)
    out = tmp_path / "annotated.parquet"
    predictions = expected_predictions(tiny_rm_dir, rows)
    # A killed earlier run: 4 rows done, and a part file from a run with another plan.
    from hs2trl.data.sources import read_records
    from hs2trl.rm.annotate import annotated_rows, append_rows, part_file, work_file

    done = read_records(data)[:4]
    append_rows(work_file(str(out)), annotated_rows(done, predictions[:4], ATTRS, True))
    stale = part_file(str(out), 2, 9)
    stale.write_text('{"half": "written"}\n')
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--num-processes", "2",
                   "--chunk_size", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout and "resuming: 4 of 16" in proc.stdout
    check_annotated(pq.read_table(out).to_pylist(), rows, predictions)
    # Parts merged and removed, the lock's holder record too (its empty OS lock file may stay beside the output).
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".hs2.lock"))
    assert left == ["annotated.parquet", "hs.jsonl"]


def test_annotate_input_formats(tmp_path):
    from hs2trl.data.records import Record
    from hs2trl.rm.annotate import row_conversation

    helpsteer = Record("f", 1, {"prompt": "Hi\n<extra_id_1>Assistant\nHello\n<extra_id_1>User\nQ?", "response": "A."})
    assert [m["role"] for m in row_conversation(helpsteer)] == ["user", "assistant", "user", "assistant"]
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert row_conversation(Record("f", 2, {"messages": messages})) == messages
    assert row_conversation(Record("f", 3, {"prompt": messages[:1], "response": "A."})) == messages
    nemo = {"system": "Be kind.", "mask": "User", "conversations": [
        {"from": "User", "value": "Q?", "label": None}, {"from": "Assistant", "value": "A.", "label": None}]}
    assert row_conversation(Record("f", 4, nemo)) == [{"role": "system", "content": "Be kind."}, *messages]
    with pytest.raises(Hs2Error, match=r"f: row 5: field 'conversations': the last turn must be a "
                                       r"non-empty Assistant"):
        row_conversation(Record("f", 5, {"conversations": nemo["conversations"][:1]}))
    with pytest.raises(Hs2Error, match=r"f: row 6: field 'response': missing column"):
        row_conversation(Record("f", 6, {"prompt": "Q?", "chosen": "A."}))
    with pytest.raises(Hs2Error, match=r"f: row 7: no response to score"):
        row_conversation(Record("f", 7, {"text": "A."}))


def test_resume_refuses_an_output_of_other_data(tmp_path):
    from hs2trl.data.records import Record
    from hs2trl.rm.annotate import added_columns, count_done

    records = [Record("in.jsonl", i, r) for i, r in enumerate(helpsteer_rows(3), start=1)]
    skip = added_columns(ATTRS, True, False)
    out = tmp_path / "out.jsonl"
    good = [{**r.data, "pred_helpfulness": 1.0} for r in records[:2]]
    out.write_text("".join(json.dumps(r) + "\n" for r in good))
    assert count_done(out, records, skip) == 2
    out.write_text(json.dumps(good[0]) + "\n" + json.dumps({**good[1], "response": "changed"}) + "\n")
    with pytest.raises(Hs2Error, match=r"out.jsonl: line 2 does not match input row 2 \(in.jsonl\)"):
        count_done(out, records, skip)
    out.write_text("".join(json.dumps(r.data) + "\n" for r in records) * 2)
    with pytest.raises(Hs2Error, match="more rows than the input"):
        count_done(out, records, skip)


def test_shards_are_contiguous_and_cover_the_rest():
    from hs2trl.rm.annotate import shards

    assert shards(4, 16, 2) == [(4, 10), (10, 16)]
    assert shards(0, 5, 3) == [(0, 1), (1, 3), (3, 5)]
    assert shards(7, 8, 4) == [(7, 7), (7, 7), (7, 7), (7, 8)]
