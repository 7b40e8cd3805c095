"""Annotating a dataset with a reward model: every response gets the raw predictions and the SteerLM labels.

Input rows (one response each, kept whole in the output, in input order):
- HelpSteer2: `prompt` (string, multi-turn `<extra_id_1>` markers allowed) + `response`;
- `prompt` as chat messages + `response`;
- chat `messages` ending on an assistant turn;
- NeMo / Daring Anteater: `conversations` (`[{"from": "User"|"Assistant", "value": ...}]`, optional `system`); the
  final assistant turn is scored.
Columns added, per model output `a` (the model's id2label): `pred_a` (raw float) and, for a multi-attribute RM,
`label_a` (the SteerLM label: clamped to [0, 4] and rounded); with weights, `reward` (the weighted sum). The
prefixes keep HelpSteer2's gold columns (`helpfulness`, ...) intact next to the predictions.

Resumable: rows are appended to the output in input order, one chunk at a time. A rerun drops a torn last line,
checks that the rows already there are the input's first rows (same input columns), and continues after them.
Several processes each score a contiguous shard into a part file; the main process appends the parts in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hs2trl.data.helpsteer2 import conversation
from hs2trl.data.records import Record, drop_torn_tail
from hs2trl.runtime.errors import Hs2Error

PRED_PREFIX, LABEL_PREFIX, REWARD_COLUMN = "pred_", "label_", "reward"
NEMO_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


# ---------------------------------------------------------------------------------------------------------------
# Input rows -> conversations


def nemo_conversation(record: Record) -> list[dict[str, str]]:
    """NeMo SFT / Daring Anteater format -> chat messages."""
    turns = record.data["conversations"]
    if not isinstance(turns, list) or not turns:
        raise Hs2Error(f"{record.where('conversations')}: expected a non-empty list of turns")
    messages = []
    system = record.data.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        role = NEMO_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None or not isinstance(value, str):
            raise Hs2Error(f"{record.where('conversations')}: turn {i} must have 'from' (User/Assistant) and a "
                           "string 'value'")
        messages.append({"role": role, "content": value})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise Hs2Error(f"{record.where('conversations')}: the last turn must be a non-empty Assistant turn")
    return messages


def row_conversation(record: Record) -> list[dict[str, str]]:
    """The conversation to score for one input row (validated; errors name the file, row and field)."""
    data = record.data
    if "conversations" in data and not any(k in data for k in ("messages", "prompt", "response")):
        return nemo_conversation(record)
    if not any(k in data for k in ("messages", "prompt", "response", "conversations")):
        raise Hs2Error(f"{record.where()}: no response to score (expected prompt + response, messages, or "
                       "conversations)")
    return conversation(record)


# ---------------------------------------------------------------------------------------------------------------
# Output rows


def added_columns(output_names: Sequence[str], with_labels: bool, with_reward: bool) -> list[str]:
    cols = [PRED_PREFIX + a for a in output_names]
    if with_labels:
        cols += [LABEL_PREFIX + a for a in output_names]
    if with_reward:
        cols.append(REWARD_COLUMN)
    return cols


def annotated_rows(records: Sequence[Record], scores, output_names: Sequence[str], with_labels: bool,
                   rewards=None) -> list[dict[str, Any]]:
    """The input rows with `pred_*`, `label_*` (and `reward`) added."""
    from hs2trl.rm.attributes import steerlm_labels

    labels = steerlm_labels(scores).tolist() if with_labels else None
    raw = scores.tolist()
    rows = []
    for i, record in enumerate(records):
        row = dict(record.data)
        row.update({PRED_PREFIX + a: raw[i][j] for j, a in enumerate(output_names)})
        if labels is not None:
            row.update({LABEL_PREFIX + a: labels[i][j] for j, a in enumerate(output_names)})
        if rewards is not None:
            row[REWARD_COLUMN] = float(rewards[i])
        rows.append(row)
    return rows


def _dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def _input_key(data: dict, skip: Sequence[str]) -> str:
    """A canonical string of a row's input columns (as they come back from JSON), to match resumed rows."""
    normalised = json.loads(_dumps({k: v for k, v in data.items() if k not in skip}))
    return json.dumps(normalised, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------------
# Resumable JSON-lines files


def verified_rows(path: Path, records: Sequence[Record], skip: Sequence[str], offset: int = 0) -> Iterator[dict]:
    """The complete rows of `path` (a torn last line is left to its writer to cut), row i checked to be
    `records[offset + i]` with columns added: what lets a rerun trust rows it did not write (else a one-line error)."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                return
            yield _checked_row(path, n, line, records, skip, offset + n - 1)


def _checked_row(path: Path, n: int, line: str, records: Sequence[Record], skip: Sequence[str], i: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise Hs2Error(f"{path}: line {n}: malformed JSON; delete the file to start again") from None
    if i >= len(records) or not isinstance(row, dict):
        raise Hs2Error(f"{path}: has more rows than the input ({len(records)}); is it the output of another dataset?")
    record = records[i]
    keys = [k for k in record.data if k not in skip]
    if any(k not in row for k in keys) or _input_key({k: row[k] for k in keys}, []) != _input_key(record.data, skip):
        raise Hs2Error(
            f"{path}: line {n} does not match input row {record.row} ({record.source}): the output belongs to "
            "other data; delete it, pass --overwrite, or choose another --output"
        )
    return row


def count_done(path: Path, records: Sequence[Record], skip: Sequence[str], offset: int = 0) -> int:
    """How many complete rows `path` holds (a torn last line is cut first); each must match `records[offset + i]`."""
    drop_torn_tail(path)
    return sum(1 for _ in verified_rows(path, records, skip, offset))


@dataclass(frozen=True)
class InputOrderPart:
    """A file of the resumable pass (`hs2trl.runtime.resumable`) holding annotated rows in input order from input row
    `offset`: the output itself, or one rank's contiguous shard. A row's id is its input index, and reading checks
    that each row is the input row it claims to be."""

    path: Path
    records: Sequence[Record]
    skip: Sequence[str]
    offset: int = 0

    def cut_torn_tail(self) -> None:
        drop_torn_tail(self.path)

    def read(self) -> dict[int, dict]:
        return dict(enumerate(verified_rows(self.path, self.records, self.skip, self.offset), start=self.offset))

    def append(self, rows: Sequence[dict]) -> None:
        append_rows(self.path, rows)


@dataclass(frozen=True)
class ShardParts:
    """The pass's files: rank R appends its contiguous shard, which starts at input row `starts[R]`, to `files[R]`."""

    files: Sequence[Path]
    starts: Sequence[int]
    records: Sequence[Record]
    skip: Sequence[str]

    def own(self, rank: int) -> InputOrderPart:
        return InputOrderPart(self.files[rank], self.records, self.skip, self.starts[rank])

    def every(self) -> list[InputOrderPart]:
        return [self.own(rank) for rank in range(len(self.files))]


def in_shard(plan: Sequence[tuple[int, int]]):
    """The pass's `share`: rank R takes the rows left in its shard `plan[R]`, so that its part stays in input order."""

    def share(todo: Sequence[dict], rank: int, world: int) -> list[dict]:
        lo, hi = plan[rank]
        return [item for item in todo if lo <= item["id"] < hi]

    return share


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append and flush to disk: a crash loses at most the chunk being written."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(_dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Output files


def work_file(output: str) -> Path:
    """Where rows accumulate: the output itself for .jsonl; a `.partial.jsonl` next to a .parquet output."""
    if output.endswith(".parquet"):
        return Path(output + ".partial.jsonl")
    if output.endswith(".jsonl"):
        return Path(output)
    raise Hs2Error(f"--output {output}: use a .jsonl or .parquet file")


def part_file(output: str, start: int, end: int) -> Path:
    return Path(f"{output}.part-{start:09d}-{end:09d}.jsonl")


def stale_parts(output: str, keep: Sequence[Path]) -> list[Path]:
    keep_names = {p.name for p in keep}
    folder = Path(output).parent
    prefix = Path(output).name + ".part-"
    return [p for p in folder.glob(prefix + "*.jsonl") if p.name not in keep_names]


def shards(start: int, end: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal shards of [start, end) for `world` processes."""
    n = end - start
    bounds = [start + (n * r) // world for r in range(world + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def finish_parquet(output: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = work_file(output)
    rows = read_jsonl(work)
    tmp = Path(output + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(output)
    work.unlink()


def parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise Hs2Error(f"{path}: cannot read parquet ({err})") from None
