"""Append-only JSON-lines files of records keyed by one field (answers by question, judgments by question and turn):
written as results arrive, so an interrupted run keeps them; read back with the last record of a key winning."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from hs2trl.data.records import drop_torn_tail, read_complete_rows, write_jsonl


class KeyedLog:
    def __init__(self, path: str | os.PathLike, key: str = "key"):
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()  # judge threads append concurrently

    def load(self) -> dict:
        """{key: last record}; a line torn by a killed writer is cut first."""
        drop_torn_tail(self.path)
        return {row[self.key]: row for row in read_complete_rows(self.path) if isinstance(row, dict) and self.key in row}

    def append(self, records: Iterable[dict]) -> None:
        with self._lock:
            write_jsonl(self.path, records, append=True)

    def compact(self, keys: Iterable) -> None:
        """Rewrite the file with the final record of each key, in `keys` order (any others after them)."""
        records = self.load()
        ordered = [records.pop(k) for k in keys if k in records] + list(records.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_jsonl(tmp, ordered)
        tmp.replace(self.path)
