"""Read rows from a local .jsonl / .jsonl.gz / .json / .parquet file or a Hub dataset, keeping row numbers for errors;
and the helpers of resumable JSON-lines outputs. Which source a name means is `sources.read_records`."""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hs2trl.runtime.errors import Hs2Error, first_line, where

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass
class Record:
    """One input row: its data, where it came from (`source`) and its 1-based row (the line, for JSON lines)."""

    source: str
    row: int
    data: dict[str, Any]

    def where(self, field: str | None = None) -> str:
        return where(self.source, self.row, field)

    def text(self, field: str, missing: str = "missing column", empty: str = "empty text") -> str:
        """A non-empty string column; anything else is a one-line error naming the file, row and field."""
        if field not in self.data:
            raise Hs2Error(f"{self.where(field)}: {missing}")
        value = self.data[field]
        if not isinstance(value, str):
            raise Hs2Error(f"{self.where(field)}: expected a string, got {type(value).__name__}")
        if not value.strip():
            raise Hs2Error(f"{self.where(field)}: {empty}")
        return value


def is_local(source: str) -> bool:
    return os.path.exists(source) or source.endswith(LOCAL_SUFFIXES)


def read_file(source: str) -> list[Record]:
    """All rows of a local .jsonl / .jsonl.gz / .json / .parquet file."""
    path = Path(source)
    if not path.is_file():
        raise Hs2Error(f"{source}: no such file")
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return list(_read_jsonl(path))
    if name.endswith(".json"):
        return _read_json(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise Hs2Error(f"{source}: unsupported file type (use .jsonl, .jsonl.gz, .json or .parquet)")


def _read_jsonl(path: Path) -> Iterator[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:  # -sig: a BOM (Windows editors) is not data
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as err:
                    raise Hs2Error(f"{where(str(path), line_no)}: malformed JSON "
                                   f"({err.msg} at column {err.colno})") from None
                if not isinstance(data, dict):
                    raise Hs2Error(f"{where(str(path), line_no)}: expected a JSON object, got {type(data).__name__}")
                yield Record(str(path), line_no, data)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise Hs2Error(f"{path}: cannot read ({err})") from None


def _read_json(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise Hs2Error(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise Hs2Error(f"{path}: cannot read ({err})") from None
    if not isinstance(data, list):
        raise Hs2Error(f"{path}: expected a JSON list of objects")
    records = []
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise Hs2Error(f"{where(str(path), i)}: expected a JSON object, got {type(row).__name__}")
        records.append(Record(str(path), i, row))
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise Hs2Error(f"{path}: cannot read parquet ({err})") from None
    return [Record(str(path), i, row) for i, row in enumerate(table.to_pylist(), start=1)]


def read_hub(dataset_id: str, split: str) -> list[Record]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # offline, unknown id, unknown split: all user-facing
        raise Hs2Error(f"{dataset_id}: cannot load split '{split}' from the Hugging Face Hub "
                       f"({first_line(err)})") from None
    return [Record(f"{dataset_id}[{split}]", i, row) for i, row in enumerate(ds, start=1)]


# Resumable outputs (`hs2trl.runtime.resumable`): writers append complete lines; a killed writer may leave one torn
# line at the end.


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Cut a partial last line left by a killed writer, so that appending continues cleanly."""
    p = Path(path)
    if p.is_file():
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            p.write_bytes(data[: data.rfind(b"\n") + 1])


def read_complete_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a resumable output file (none if it does not exist); a torn line is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def json_safe(value):
    """`value` with NaN/inf as null (strict JSON readers refuse them), tuples as lists and keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_jsonl(path: str | os.PathLike, rows, append: bool = False) -> int:
    """Write dicts as JSON lines; returns the number written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
