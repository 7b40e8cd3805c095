"""Resumable work over items with ids: result rows are appended to JSON-lines files as they are made, so a killed run
keeps them and the rerun skips what is done.

- `KeyedLog`: one append-only JSON-lines file of rows keyed by one field. A line torn by a killed writer is cut before
  appending; read back, the last row of a key wins; appends are thread-safe; `compact` rewrites it with one row a key.
- The pass (`start_pass`, `run_pass`): `fn` over the items not done yet, in chunks, on one or several ranks. Each rank
  appends its share to its own part file (`RankParts`: `<name>.rank<R>.jsonl`; `OneFile`: one process, one file);
  an item whose id is in any part is done (parts of a run with another number of ranks count too); the ranks wait for
  each other, then every row of the pass can be read back by id.

A consumer with a rule of its own (rows that must match the input they claim to be, or an output in input order)
supplies its own part files (anything with `cut_torn_tail`, `read`, `append`) and its own `share` of the work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hs2trl.data.records import drop_torn_tail, read_complete_rows, write_jsonl
from hs2trl.runtime.errors import Hs2Error

# ------------------------------------------------------------------------------------------------ the keyed log


class KeyedLog:
    """Rows keyed by the field `key` in one append-only JSON-lines file (answers by question, samples by prompt)."""

    def __init__(self, path: str | os.PathLike, key: str = "key"):
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()  # judge threads append concurrently

    def cut_torn_tail(self) -> None:
        """Cut a partial last line left by a killed writer (only the file's own writer may: see `read`)."""
        drop_torn_tail(self.path)

    def read(self) -> dict:
        """{key: last row}, without touching the file (a torn line is skipped): safe while another rank writes it."""
        return {row[self.key]: row for row in read_complete_rows(self.path)
                if isinstance(row, dict) and self.key in row}

    def load(self) -> dict:
        """{key: last row}; a line torn by a killed writer is cut first."""
        self.cut_torn_tail()
        return self.read()

    def append(self, rows: Iterable[dict]) -> None:
        with self._lock:
            write_jsonl(self.path, rows, append=True)

    def compact(self, keys: Iterable) -> None:
        """Rewrite the file with the final row of each key, in `keys` order (any others after them)."""
        rows = self.load()
        ordered = [rows.pop(k) for k in keys if k in rows] + list(rows.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_jsonl(tmp, ordered)
        tmp.replace(self.path)


# ------------------------------------------------------------------------------------------------ part files


class Part(Protocol):
    """One rank's file of a pass: `KeyedLog`, or a consumer's own (annotate's rows in input order)."""

    path: Path

    def cut_torn_tail(self) -> None: ...

    def read(self) -> dict: ...

    def append(self, rows: Sequence[dict]) -> None: ...


class Parts(Protocol):
    """Where a pass's rows go: `own(rank)` is appended to by that rank; `every()` is read to know what is done."""

    def own(self, rank: int) -> Part: ...

    def every(self) -> list[Part]: ...


@dataclass(frozen=True)
class RankParts:
    """One file per rank, `folder/<name>.rank<R>.jsonl`."""

    folder: Path
    name: str
    key: str = "id"

    def own(self, rank: int) -> KeyedLog:
        return KeyedLog(Path(self.folder) / f"{self.name}.rank{rank}.jsonl", self.key)

    def every(self) -> list[KeyedLog]:
        # every rank count, not only this run's: a rerun on fewer processes keeps the others' rows
        return [KeyedLog(p, self.key) for p in sorted(Path(self.folder).glob(f"{self.name}.rank*.jsonl"))]


@dataclass(frozen=True)
class OneFile:
    """A single process's pass whose one file is also its output (generations.jsonl, `hs2 generate --output`)."""

    path: Path
    key: str = "id"

    def own(self, rank: int) -> KeyedLog:
        if rank:
            raise ValueError(f"{self.path}: a one-file pass runs on one process, not rank {rank}")
        return KeyedLog(self.path, self.key)

    def every(self) -> list[KeyedLog]:
        return [KeyedLog(self.path, self.key)]


# ------------------------------------------------------------------------------------------------ the pass


class OneProcess:
    """The ranks of a pass that one process runs alone (what accelerate's `PartialState` is for several)."""

    process_index = 0
    num_processes = 1
    is_local_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def every_nth(todo: Sequence[dict], rank: int, world: int) -> list[dict]:
    """Rank R's share of what is left: every R-th item (balanced however the earlier run stopped)."""
    return list(todo[rank::world])


@dataclass
class Pass:
    """A pass over `items` whose done part has been read: `mine` is this rank's share of the rest."""

    items: Sequence[dict]
    parts: Parts
    own: Part
    ranks: object
    key: str
    already_done: int  # items finished by an earlier run
    mine: list[dict]

    def run(self, fn: Callable[[list[dict]], list[dict]], chunk_size: int, desc: str | None,
            unit: str = "item") -> None:
        """`fn` over this rank's share, `chunk_size` items at a time, each chunk's rows appended as it finishes
        (a progress bar named `desc`; none without); then wait for the other ranks."""
        from tqdm.auto import tqdm

        quiet = desc is None or not self.ranks.is_local_main_process
        with tqdm(total=len(self.mine), desc=desc, unit=unit, disable=quiet) as bar:
            for start in range(0, len(self.mine), chunk_size):
                chunk = self.mine[start : start + chunk_size]
                self.own.append(fn(chunk))
                bar.update(len(chunk))
        self.ranks.wait_for_everyone()

    def rows(self) -> dict[Hashable, dict]:
        """Every row of the pass by id, read from every part; an item without a row is a one-line error."""
        by_id: dict = {}
        for part in self.parts.every():
            for key, row in part.read().items():
                by_id.setdefault(key, row)  # ids are disjoint between parts; the first part wins if not
        missing = [item[self.key] for item in self.items if item[self.key] not in by_id]
        if missing:
            raise Hs2Error(f"{self.own.path}: {len(missing)} of {len(self.items)} items have no row after the pass "
                           f"(first: {self.key} {missing[0]}); rerun the same command to finish them")
        return by_id


def start_pass(items: Sequence[dict], parts: Parts, key: str = "id", ranks=None,
               share: Callable[[Sequence[dict], int, int], list[dict]] = every_nth) -> Pass:
    """Read what is done (after each rank cuts its own part's torn tail) and give this rank its share of the rest.
    `ranks`: accelerate's `PartialState` for several processes (every rank must call this), else one process."""
    ranks = ranks or OneProcess()
    own = parts.own(ranks.process_index)
    own.cut_torn_tail()  # only its writer cuts a file: two ranks rewriting one file could lose rows
    ranks.wait_for_everyone()
    done: set = set()
    for part in parts.every():
        done |= part.read().keys()
    ranks.wait_for_everyone()  # everyone has read the same state before anyone appends
    todo = [item for item in items if item[key] not in done]
    mine = share(todo, ranks.process_index, ranks.num_processes)
    return Pass(items, parts, own, ranks, key, len(items) - len(todo), mine)


def run_pass(items: Sequence[dict], parts: Parts, fn: Callable[[list[dict]], list[dict]], chunk_size: int, desc: str,
             key: str = "id", ranks=None, unit: str = "item",
             resuming: Callable[[int], str] | None = None) -> dict[Hashable, dict]:
    """The whole pass: skip what is done (`resuming(n_done)`, if given, is said when an earlier run did some), run
    `fn` over the rest, return every row by id once all ranks are done."""
    from hs2trl.runtime.say import say

    work = start_pass(items, parts, key, ranks)
    if work.already_done and resuming is not None:
        say(resuming(work.already_done))
    work.run(fn, chunk_size, desc, unit)
    return work.rows()
