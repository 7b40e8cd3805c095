"""The rounds driver (`hs2trl.runtime.rounds`): DONE markers old and new, finished rounds skipped with one line, each
round's model the next one's policy, a stage that stops early, the PUSHED marker, and a phase in a child process."""

from __future__ import annotations

import json
import sys

import pytest

from hs2trl.runtime.rounds import Rounds, drive_rounds, run_in_child, without_distributed_env


def test_done_markers_new_and_old(tmp_path):
    rounds = Rounds(tmp_path, "iteration-", label="iteration")
    assert rounds.summary(0) is None and not rounds.is_done(0)
    rounds.mark_done(0, {"iteration": 0, "policy": "base"})
    assert json.loads((tmp_path / "iteration-0" / "DONE").read_text()) == {"iteration": 0, "policy": "base"}
    assert rounds.summary(0) == {"iteration": 0, "policy": "base"}
    (tmp_path / "iteration-1").mkdir()
    (tmp_path / "iteration-1" / "DONE").write_text("done\n")  # what SteerLM 2.0 wrote before: still finished
    assert rounds.is_done(1) and rounds.summary(1) == {}
    assert (rounds.name(1), rounds.revision(1), rounds.model(1)) == ("iteration 1", "iteration-1",
                                                                     tmp_path / "iteration-1" / "model")
    assert Rounds(tmp_path, "round-").name(2) == "round-2"  # without a label, the folder name


def test_pushed_marker(tmp_path):
    rounds = Rounds(tmp_path, "round-")
    rounds.folder(1).mkdir()
    assert rounds.pushed_to(1) is None
    rounds.mark_pushed(1, "me/model")
    assert rounds.pushed_to(1) == "me/model"


def test_finished_rounds_are_skipped_and_each_model_is_the_next_policy(tmp_path, capsys):
    rounds = Rounds(tmp_path, "round-")
    rounds.mark_done(1, {"round": 1})
    ran, after = [], []

    def run_round(r: int, policy: str) -> dict:
        ran.append((r, policy))
        return {"round": r, "policy": policy}

    final = drive_rounds(rounds, range(1, 4), "base", run_round, lambda r, fresh: after.append((r, fresh)))
    out = capsys.readouterr().out
    assert out.count("done already") == 1 and f"round-1: done already ({tmp_path / 'round-1' / 'model'})" in out
    assert ran == [(2, str(rounds.model(1))), (3, str(rounds.model(2)))]
    assert after == [(1, False), (2, True), (3, True)]
    assert final == str(rounds.model(3))
    assert rounds.summary(3) == {"round": 3, "policy": str(rounds.model(2))}

    # a rerun runs nothing and ends on the same model
    assert drive_rounds(rounds, range(1, 4), "base", lambda r, p: pytest.fail("ran again")) == final


def test_a_stage_that_stops_leaves_the_round_unfinished(tmp_path):
    rounds = Rounds(tmp_path, "iteration-", label="iteration")
    ran = []

    def run_round(i: int, policy: str) -> dict | None:
        ran.append(i)
        return None if i == 1 else {"iteration": i}  # e.g. --phase sample

    assert drive_rounds(rounds, range(3), "base", run_round) is None
    assert ran == [0, 1] and rounds.is_done(0) and not rounds.is_done(1)


def test_only_the_marker_writer_writes_done(tmp_path):
    rounds = Rounds(tmp_path, "iteration-")
    assert drive_rounds(rounds, range(1), "base", lambda i, p: {"iteration": i}, writes_markers=False) \
        == str(rounds.model(0))
    assert not rounds.is_done(0)


def test_a_child_alone_has_no_distributed_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    env = without_distributed_env()
    assert "RANK" not in env and "ACCELERATE_MIXED_PRECISION" not in env and "PATH" in env
    probe = [sys.executable, "-c", "import os, sys; sys.exit(5 if 'RANK' in os.environ else 0)"]
    run_in_child(probe, "probe", alone=True)  # returns: the child saw no RANK
    with pytest.raises(SystemExit) as exited:
        run_in_child(probe, "probe")
    assert exited.value.code == 5


def test_a_failed_child_ends_this_process_with_its_status(capsys):
    failures = []
    with pytest.raises(SystemExit) as exited:
        run_in_child([sys.executable, "-c", "import sys; sys.exit(3)"], "round-1 sampling", on_failure=failures.append)
    assert exited.value.code == 3 and failures == [3]
    assert ("hs2: error: round-1 sampling failed (exit status 3); rerun the same command to resume"
            in capsys.readouterr().err)
    # Ctrl-C: the child has said what continues; no second line here
    with pytest.raises(SystemExit) as exited:
        run_in_child([sys.executable, "-c", "import sys; sys.exit(130)"], "round-1 DPO training")
    assert exited.value.code == 130 and "error" not in capsys.readouterr().err
