"""The rounds driver: a stage that repeats "sample, then train" (iterative DPO's `round-<r>`, SteerLM 2.0's
`iteration-<i>`), one folder per round under the run's output folder, resumable round by round.

The driver owns:
- the round folders, `<output_dir>/<prefix><i>`, and the round's model in `model/` (the next round's policy);
- the markers, written one way: `DONE` (written last: a JSON summary of the round; the plain `done` text older
  SteerLM 2.0 runs wrote still reads as finished) and `PUSHED` (the Hub repo the round's model went to, so that a rerun
  after a failed push pushes the finished round again, and only then);
- the Hub revision of a round: its folder name (`round-2`, `iteration-0`);
- the loop: a finished round is skipped with one line and its model becomes the policy;
- running a phase of a round in a child process (`run_in_child`): optionally without this launch's distributed
  variables (a process of its own that uses every GPU of the node, not a rank), Ctrl-C and failures ending this
  process with the child's status.
A stage supplies: the prefix and how its lines name a round, the round indices, what one round does and the summary
it returns (`run_round`), what follows a finished round (`after_done`: e.g. its push), and the child's command line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hs2trl.runtime.errors import EXIT_INTERRUPTED
from hs2trl.runtime.say import say

OLD_DONE_TEXT = "done"  # what SteerLM 2.0 wrote in DONE before the JSON summary


@dataclass(frozen=True)
class Rounds:
    """The round folders of one run: `root/<prefix><i>`. `label` names round i in lines ("iteration" -> "iteration 0");
    without it the folder name does."""

    root: Path
    prefix: str
    label: str | None = None

    def folder(self, i: int) -> Path:
        return Path(self.root) / f"{self.prefix}{i}"

    def model(self, i: int) -> Path:
        return self.folder(i) / "model"

    def revision(self, i: int) -> str:
        """The Hub revision round i's model is pushed as."""
        return self.folder(i).name

    def name(self, i: int) -> str:
        return f"{self.label} {i}" if self.label else self.folder(i).name

    def summary(self, i: int) -> dict | None:
        """What DONE says about round i: its JSON summary ({} for the old `done` text), or None if it is not done."""
        marker = self.folder(i) / "DONE"
        if not marker.is_file():
            return None
        text = marker.read_text(encoding="utf-8").strip()
        if text == OLD_DONE_TEXT:
            return {}
        try:
            summary = json.loads(text)
        except json.JSONDecodeError:
            summary = None
        if not isinstance(summary, dict):
            return {}  # a DONE marker is written last: whatever it holds, the round finished
        return summary

    def is_done(self, i: int) -> bool:
        return self.summary(i) is not None

    def mark_done(self, i: int, summary: dict) -> None:
        """Write DONE (atomically: a half-written marker must not read as a finished round)."""
        marker = self.folder(i) / "DONE"
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name("DONE.tmp")
        tmp.write_text(json.dumps(summary) + "\n", encoding="utf-8")
        tmp.replace(marker)

    def pushed_to(self, i: int) -> str | None:
        """The Hub repo round i's model was pushed to, if it was."""
        marker = self.folder(i) / "PUSHED"
        if not marker.is_file():
            return None
        return marker.read_text(encoding="utf-8").strip() or None

    def mark_pushed(self, i: int, repo: str) -> None:
        (self.folder(i) / "PUSHED").write_text(f"{repo}\n", encoding="utf-8")


def drive_rounds(rounds: Rounds, indices: Iterable[int], policy: str, run_round: Callable[[int, str], dict | None],
                 after_done: Callable[[int, bool], None] | None = None, writes_markers: bool = True) -> str | None:
    """Run the rounds in order from `policy`, each round's model the next one's policy.

    A finished round (DONE) is skipped with one line. Otherwise `run_round(i, policy)` runs it and returns its summary,
    which is written to DONE (by the process that `writes_markers`: the main one), or None when the stage stops before
    the round is finished (e.g. `--phase sample`): then nothing more runs and None is returned. `after_done(i, fresh)`
    follows every finished round (`fresh`: finished by this run). Returns the final policy."""
    for i in indices:
        fresh = not rounds.is_done(i)
        if fresh:
            summary = run_round(i, policy)
            if summary is None:
                return None
            if writes_markers:
                rounds.mark_done(i, summary)
        else:
            say(f"{rounds.name(i)}: done already ({rounds.model(i)}), skipping")
        policy = str(rounds.model(i))
        if after_done is not None:
            after_done(i, fresh)
    return policy


# ------------------------------------------------------------------------------------------------ child processes

# Set by a distributed launch (torchrun, accelerate): a child that inherits them believes it is a rank of that launch.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                   "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")
DISTRIBUTED_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "FSDP_")


def without_distributed_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) without the variables that make a process one rank of a launch."""
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if k not in DISTRIBUTED_ENV and not k.startswith(DISTRIBUTED_PREFIXES)}


def run_in_child(cmd: list[str], what: str, alone: bool = False,
                 on_failure: Callable[[int], None] | None = None) -> None:
    """Run one phase of a round as a child process and wait for it (its command line is printed, SIGTERM/SIGHUP passed
    on). `alone`: without this launch's distributed variables. Ctrl-C ends this process with the child's status (the
    child has said what the same command continues from); another failure is one line naming `what`, then
    `on_failure(status)` (e.g. a marker other ranks wait for), then the same exit status."""
    from hs2trl.runtime.launch import run

    status = run(cmd, env=without_distributed_env() if alone else None)
    if status == 0:
        return
    if status != EXIT_INTERRUPTED:
        say(f"error: {what} failed (exit status {status}); rerun the same command to resume", err=True)
    if on_failure is not None:
        on_failure(status)
    sys.exit(status)
