"""The resumable pass (`hs2trl.runtime.resumable`): a killed run's rows are kept and not made again, a torn last line
is cut, several ranks each append their share to their own part and all read every row back by id."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.resumable import KeyedLog, OneFile, RankParts, run_pass, start_pass


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def squares(made: list):
    """A pass function that records which ids it was asked for."""

    def fn(chunk: list[dict]) -> list[dict]:
        made.extend(item["id"] for item in chunk)
        return [{"id": item["id"], "square": item["id"] ** 2} for item in chunk]

    return fn


class ThreadRanks:
    """Ranks of one pass as threads of this process: what accelerate's PartialState offers, with a real barrier."""

    def __init__(self, index: int, barrier: threading.Barrier):
        self.process_index, self.num_processes = index, barrier.parties
        self.is_local_main_process = index == 0
        self._barrier = barrier

    def wait_for_everyone(self) -> None:
        self._barrier.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ the keyed log


def test_keyed_log_cuts_a_torn_tail_and_keeps_the_last_row_of_a_key(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "turns": ["old"]}\n{"question_id": 2, "turns": ["b"]}\n'
                    '{"question_id": 1, "turns": ["new"]}\n{"question_id": 3, "tu')
    log = KeyedLog(path, key="question_id")
    assert log.load() == {1: {"question_id": 1, "turns": ["new"]}, 2: {"question_id": 2, "turns": ["b"]}}
    assert path.read_text().endswith("\n")  # the torn line is gone, so an append starts on a line of its own
    log.append([{"question_id": 3, "turns": ["c"]}])
    log.compact([3, 1])
    assert [r["question_id"] for r in lines(path)] == [3, 1, 2]  # `keys` order first, the others after
    assert lines(path)[1]["turns"] == ["new"]


def test_keyed_log_appends_from_threads_whole_lines(tmp_path):
    log = KeyedLog(tmp_path / "judgments.jsonl")
    threads = [threading.Thread(target=lambda k=k: [log.append([{"key": f"{k}-{i}", "text": "x" * 500}])
                                                     for i in range(50)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.load()) == 200 and len(lines(log.path)) == 200


# ------------------------------------------------------------------------------------------------ one process


def test_a_killed_pass_resumes_without_redoing_its_rows(tmp_path, capsys):
    path = tmp_path / "generations.jsonl"
    items = [{"id": i} for i in range(7)]
    # A killed run: ids 0 and 3 written, id 4 torn mid-line.
    path.write_text('{"id": 0, "square": "kept"}\n{"id": 3, "square": "kept"}\n{"id": 4, "squ')
    made: list = []
    rows = run_pass(items, OneFile(path), squares(made), chunk_size=2, desc="squares",
                    resuming=lambda n: f"squares: {n} of {len(items)} already done, resuming")
    assert made == [1, 2, 4, 5, 6]
    assert rows[0]["square"] == rows[3]["square"] == "kept" and rows[6]["square"] == 36
    assert sorted(r["id"] for r in lines(path)) == list(range(7))  # every line whole, each id once
    assert "squares: 2 of 7 already done, resuming" in capsys.readouterr().out
    # complete: a rerun makes nothing
    again = start_pass(items, OneFile(path))
    assert again.already_done == 7 and again.mine == []


def test_rows_missing_after_the_pass_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "scores.jsonl"
    work = start_pass([{"id": "a"}, {"id": "b"}], OneFile(path))
    work.run(lambda chunk: [{"id": "a"}], chunk_size=2, desc=None)  # a function that left one out
    with pytest.raises(Hs2Error, match=r"scores.jsonl: 1 of 2 items have no row after the pass \(first: id b\)"):
        work.rows()


# ------------------------------------------------------------------------------------------------ several ranks


def run_ranks(world: int, folder: Path, items: list[dict], made: list) -> list:
    barrier, results = threading.Barrier(world), [None] * world

    def rank(r: int) -> None:
        results[r] = run_pass(items, RankParts(folder, "square"), squares(made[r]), chunk_size=2, desc="squares",
                              ranks=ThreadRanks(r, barrier))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_ranks_share_the_rest_and_both_read_every_row(tmp_path):
    items = [{"id": i} for i in range(9)]
    folder = tmp_path / "parts"
    folder.mkdir()
    # An earlier run on three ranks was killed: rank 2's part holds id 2 and a torn line; rank 0's holds id 0.
    (folder / "square.rank0.jsonl").write_text('{"id": 0, "square": 0}\n')
    (folder / "square.rank2.jsonl").write_text('{"id": 2, "square": 4}\n{"id": 5, "sq')
    made: list = [[], []]
    results = run_ranks(2, folder, items, made)
    assert sorted(made[0] + made[1]) == [1, 3, 4, 5, 6, 7, 8]  # nothing made twice, nothing done again
    assert made[0] == [1, 4, 6, 8] and made[1] == [3, 5, 7]  # every other remaining item
    for rows in results:
        assert {k: v["square"] for k, v in rows.items()} == {i: i * i for i in range(9)}
    own = {r: [row["id"] for row in lines(folder / f"square.rank{r}.jsonl")] for r in (0, 1)}
    assert own == {0: [0, 1, 4, 6, 8], 1: [3, 5, 7]}  # each rank appended to its own part only
