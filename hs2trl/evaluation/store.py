"""Append-only JSON-lines files of records keyed by one field (answers by question, judgments by question and turn):
written as results arrive, so an interrupted run keeps them; read back with the last record of a key winning."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from ..data.records import drop_torn_tail, read_complete_rows


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def compact(self, keys: Iterable) -> None:
        """Rewrite the file with the final record of each key, in `keys` order (any others after them)."""
        records = self.load()
        ordered = [records.pop(k) for k in keys if k in records] + list(records.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
        tmp.replace(self.path)
